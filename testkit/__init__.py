"""What the tests and the benchmarks share: footage they generate or download once (`media`), a real RTSP camera
(`rtsp`, GStreamer's server run by the system python), waits on a stream (`waits`). Never imported by the
service; not in the wheel."""
