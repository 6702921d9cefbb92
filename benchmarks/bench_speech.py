"""Spoken needles in long footage, through the production service: can a question find what was said, how well
does the recognizer hear synthetic voices, and what does speech cost ingest?

    python benchmarks/bench_speech.py --quick          # 10 min of footage, 10 needles (~3 min on 2 cores)
    python benchmarks/bench_speech.py --minutes 60     # 1 h, 24 needles
    python benchmarks/bench_speech.py --json out.json

Footage: `testkit.media.spoken_footage`: the synthetic test pattern (H.264, 160x120, 2 fps, a scene every few
minutes) with an AAC track holding needle sentences spoken by espeak-ng at known, evenly spread times over a
faint noise floor; half as many distractor sentences (other topics) between them. Each needle has a question
worded unlike its sentence ("When did someone call for an ambulance?" for "Please send an ambulance to the
parking garage.").

Runs, each through a real `VigilServer` (tiny model, real Redis, frame index off so only speech is measured):

* ingest with speech on and with speech off (`VIGIL_SPEECH__ENABLED`), sampled at 1 fps, 8-frame clips: wall time
  and the speed in media seconds per wall second (the issue's goal: >= 10x real time on 2 cores at 1 h);
* recall@1 / @5: a needle counts as found at k when one of the top-k evidence chunks (by fused rank, default
  retrieval settings) overlaps the 4 s after its start;
* WER of the recognizer on the needles: the words of the transcript segments starting within 1.5 s of a needle,
  against the sentence (lower case, punctuation dropped, numbers as digits);
* transcription cost: the recognizer alone (the speech thread's code, `services.transcripts.SpeechFeed`, over the
  file's decoded audio) in CPU-seconds per media hour, with its share of silence skipped by the VAD.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import log, md_table  # noqa: E402

NEEDLES = [  # (sentence, question, words the question is about)
    ("Please send an ambulance to the parking garage.", "When did someone call for an ambulance?"),
    ("The fire alarm is ringing in the kitchen.", "When was the fire alarm going off in the kitchen?"),
    ("The package was delivered to the front desk.", "When was the package dropped off at the front desk?"),
    ("Somebody left the blue door open.", "When was the blue door left open?"),
    ("The printer on the third floor is out of paper.", "When did the printer run out of paper?"),
    ("A customer is waiting at the pharmacy counter.", "When was a customer waiting at the pharmacy?"),
    ("The elevator is stuck between two floors.", "When did the elevator get stuck?"),
    ("Lunch will be served in the cafeteria at noon.", "When was lunch announced?"),
    ("The train to the airport has been cancelled.", "When was the airport train cancelled?"),
    ("Please move your car out of the loading zone.", "When was someone asked to move their car?"),
    ("The coffee machine is broken again.", "When did the coffee machine break?"),
    ("There is water leaking from the ceiling.", "When was the ceiling leaking water?"),
    ("The meeting has been moved to the library.", "Where was the meeting moved to?"),
    ("A child has lost her mother near the fountain.", "When was a lost child reported?"),
    ("The password for the guest network has changed.", "When did the guest network password change?"),
    ("All visitors must sign in at the reception.", "When were visitors told to sign in?"),
    ("The bakery is closing in ten minutes.", "When was the bakery about to close?"),
    ("Somebody spilled orange juice in aisle five.", "When was juice spilled in an aisle?"),
    ("The bus to the stadium leaves from platform two.", "Which platform does the stadium bus leave from?"),
    ("Security, please come to the main entrance.", "When was security called to the entrance?"),
    ("The heating in the gym is not working.", "When did the gym heating fail?"),
    ("A black dog is running across the field.", "When was a dog running across the field?"),
    ("The library will close early today because of the storm.", "When did the library announce an early closing?"),
    ("Your table for four is ready in the garden.", "When was the garden table ready?"),
]
DISTRACTORS = [
    "Thank you for shopping with us today.", "Have a nice weekend everyone.", "The weather will be sunny tomorrow.",
    "Please keep your belongings with you.", "We hope you enjoyed the show.", "Remember to drink enough water.",
    "The next announcement follows shortly.", "Our opening hours are on the website.",
    "Smoking is not allowed in this building.", "Mind the gap between the train and the platform.",
    "Welcome to the spring festival.", "Music lessons start next Monday.",
]
FPS, CLIP, HIT_S = 1.0, 8, 4.0
_NUMS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}


def words(text: str) -> list[str]:
    out = []
    for w in re.sub(r"[^\w\s]", " ", text.lower()).split():
        out.append(_NUMS.get(w, w))
    return out


def edit_distance(a: list[str], b: list[str]) -> int:
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j - 1] + (x != y), prev[j] + 1, cur[j - 1] + 1)
        prev = cur
    return prev[-1]


def plan(minutes: float) -> tuple[list[tuple[float, str, str]], list[tuple[float, str]]]:
    """(needles (time, sentence, question), every utterance (time, sentence)) evenly over the footage."""
    seconds = minutes * 60
    n = min(len(NEEDLES), max(2, int(minutes)))
    step = seconds / n
    needles = [(round(i * step + 5.0 + (i * 7) % 11, 1), s, q) for i, (s, q) in enumerate(NEEDLES[:n])]
    said = [(t, s) for t, s, _ in needles]
    for i in range(n // 2):  # distractors halfway between needles
        said.append((round(needles[i * 2][0] + step / 2, 1), DISTRACTORS[i % len(DISTRACTORS)]))
    return needles, sorted(said)


def serve(speech: bool, media_dir: Path):
    from encoders.describe import DescriberOptions
    from encoders.loading import load_adapter
    from encoders.options import ModelOptions
    from encoders.speech import SpeechOptions
    from services.config import Settings
    from services.server import VigilServer

    cache = Path(__file__).resolve().parents[1] / "tests" / ".cache" / "vigil"
    adapter = load_adapter(ModelOptions(name="tiny", device="cpu"), cache_dir=cache)
    s = Settings(host="127.0.0.1", port=0, namespace=f"benchspeech-{uuid.uuid4().hex[:6]}", media_roots=(str(media_dir),),
                 cache_dir=cache, http_port=0, frames=DescriberOptions(enabled=False),
                 speech=SpeechOptions(enabled=speech))
    srv = VigilServer(s, adapter=adapter)
    return srv, f"127.0.0.1:{srv.start_in_thread()}"


def ingest(addr: str, path: Path) -> tuple[str, float]:
    from services.client import Client, state_name

    with Client(addr) as c:
        t0 = time.perf_counter()
        sid = c.start(str(path), fps=FPS, clip_frames=CLIP).stream_id
        while state_name((info := c.describe(sid)).state) not in ("finished", "failed", "stopped"):
            time.sleep(0.2)
        wall = time.perf_counter() - t0
    if state_name(info.state) != "finished":
        raise SystemExit(f"ingest {state_name(info.state)}: {info.error}")
    return sid, wall


def recognizer_cost(path: Path, seconds: float) -> dict:
    """The speech thread alone over the file's audio: recognizer seconds per media hour."""
    import resource

    from encoders.speech import SpeechOptions, load_transcriber
    from services.transcripts import SpeechFeed
    from streamer.audio import AudioBuffer
    from streamer.source import FileSource

    t = load_transcriber(SpeechOptions())
    buf = AudioBuffer(SpeechOptions().buffer_s)
    feed = SpeechFeed(t, buf, SpeechOptions(), live=False, name="bench").start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    with FileSource(path) as src:
        for f in src.frames(audio=buf):
            pass
    buf.close()
    segs = feed.until(float("inf"), threading.Event())
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    feed.stop()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    hours = seconds / 3600
    return {"segments": len(segs), "recognizer_s": feed.busy_s, "wall_s": wall, "cpu_s": cpu,
            "recognizer_s_per_media_hour": feed.busy_s / hours, "cpu_s_per_media_hour": cpu / hours,
            "dropped_s": buf.dropped_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 minutes (the default length)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from testkit import media

    needles, said = plan(args.minutes)
    seconds = args.minutes * 60
    log(f"footage: {args.minutes:g} min, {len(needles)} needles, {len(said) - len(needles)} distractors", "speech")
    t0 = time.perf_counter()
    path = media.spoken_footage(said, seconds, fps=2, scenes=max(3, int(args.minutes // 3)))
    log(f"footage ready in {time.perf_counter() - t0:.0f} s: {path}", "speech")

    runs = {}
    for speech in (False, True):
        srv, addr = serve(speech, path.parent)
        try:
            sid, wall = ingest(addr, path)
            runs[speech] = {"wall_s": wall, "speed_x": seconds / wall}
            log(f"ingest speech {'on' if speech else 'off'}: {wall:.1f} s ({seconds / wall:.1f}x real time)", "speech")
            if speech:
                from services.client import Client

                recs = srv.rt.store.chunk_records(sid)
                hits1 = hits5 = 0
                errors = ref_words = 0
                rows = []
                with Client(addr) as c:
                    for t, sentence, question in needles:
                        ev = sorted(c.ask(sid, question, top_k=5, max_new_tokens=1).evidence, key=lambda e: e.rank)
                        found = [e.rank for e in ev if e.end_s > t and e.start_s < t + HIT_S]
                        r = min(found) if found else None
                        hits1 += r == 1
                        hits5 += r is not None and r <= 5
                        heard = " ".join(seg[2] for rec in recs for seg in rec.speech if abs(seg[0] - t) < 1.5)
                        ref = words(sentence)
                        e = edit_distance(ref, words(heard))
                        errors += e
                        ref_words += len(ref)
                        rows.append([f"{t:.0f}", sentence, heard or "-", str(r or "-")])
                runs["needles"] = rows
                runs["recall@1"], runs["recall@5"] = hits1 / len(needles), hits5 / len(needles)
                runs["wer"] = errors / max(1, ref_words)
        finally:
            srv.stop_thread()
    cost = recognizer_cost(path, seconds)
    out = {"minutes": args.minutes, "needles": len(needles), "utterances": len(said),
           "ingest_off": runs[False], "ingest_on": runs[True], "recall@1": runs["recall@1"],
           "recall@5": runs["recall@5"], "wer": runs["wer"], "cost": cost, "rows": runs["needles"]}
    print(f"\n### Spoken needles: {args.minutes:g} min of footage, {len(needles)} needles + "
          f"{len(said) - len(needles)} distractors (espeak-ng), Whisper tiny.en int8, 1 thread\n")
    print(md_table(["recall@1", "recall@5", "WER", "ingest off (x real time)", "ingest on (x real time)",
                    "on / off wall", "recognizer s per media hour"],
                   [[f"{out['recall@1']:.2f}", f"{out['recall@5']:.2f}", f"{out['wer']:.2f}",
                     f"{runs[False]['speed_x']:.1f}", f"{runs[True]['speed_x']:.1f}",
                     f"{runs[True]['wall_s'] / runs[False]['wall_s']:.2f}", f"{cost['recognizer_s_per_media_hour']:.0f}"]]))
    print()
    print(md_table(["at s", "said", "heard", "rank"], runs["needles"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
