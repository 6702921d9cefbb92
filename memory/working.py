"""A stream's fixed-size working memory and the fixed-size chunk each clip leaves behind.

`step` is the whole ingest-time memory update, as one pure function:

    context = prefix + working memory          (what the clip was prefilled behind)
    attention of the proxy opener over context + clip      -> per-layer token scores
    working memory + clip (+ one prototype per new frame)  -> top `working_tokens` per layer
    clip (+ its prototypes)                                 -> top `chunk_tokens` per layer (KV chunk)
                                                               or top visual embeddings (feature chunk)

With `redundancy_weight` > 0 the attention scores of the KV candidates are mixed with their value novelty
(`memory.compress.value_novelty`) before pruning; feature chunks keep attention alone.
The prefix (system prompt, user turn opener) is never pruned and not counted in the budget.

Everything runs where the inputs live (the model's device) and never waits for it: the working memory stays
on the device between clips, and only the store's write (`memory.codec`) copies to the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from encoders.base import ClipEncoding, EncodedSegment
from memory.compress import (arrival_key, compress_tokens, frame_prototypes, in_arrival_order, mix_scores,
                             novelty_boost, proxy_attention, select, value_novelty)
from memory.layout import FeatureSet, TokenSet, concat_segments, layered
from memory.options import ChunkFormat, MemoryOptions, Policy  # step's options: budgets, scoring, chunk format


@dataclass(frozen=True)
class WorkingState:
    tokens: TokenSet  # [L, Hkv, n, D], n <= working_tokens
    next_pos: int  # where the stream's next text starts
    max_pos: int  # largest position the stream has used
    next_serial: int  # clip tokens the stream has produced
    next_frame: int  # frame groups the stream has produced

    @staticmethod
    def empty(prefix: EncodedSegment) -> "WorkingState":
        """No tokens yet, on the prefix's device."""
        L, hkv, _, D = prefix.keys.shape
        P, dev = prefix.positions.shape[-2], prefix.keys.device
        none = TokenSet(prefix.keys.new_zeros(L, hkv, 0, D), prefix.values.new_zeros(L, hkv, 0, D),  # [L, Hkv, 0, D]
                        torch.zeros(L, P, 0, dtype=torch.int64, device=dev),  # [L, P, 0]
                        torch.zeros(L, 0, dtype=torch.int64, device=dev),  # [L, 0]
                        torch.zeros(L, 0, dtype=torch.float32, device=dev))  # [L, 0]
        return WorkingState(none, prefix.next_pos, prefix.max_pos, 0, 0)

    def to(self, device: torch.device | str) -> "WorkingState":
        """The same state with its tokens on `device` (a state read back from the store is on the host)."""
        return WorkingState(self.tokens.to(device), self.next_pos, self.max_pos, self.next_serial, self.next_frame)


@dataclass(frozen=True)
class Step:
    state: WorkingState  # the working memory after the clip
    chunk: TokenSet | FeatureSet  # the clip's stored chunk
    span: tuple[int, int]  # serials of the clip's tokens before compression: [first, end)


def context(prefix: EncodedSegment, state: WorkingState) -> EncodedSegment:
    """What the next clip is prefilled behind: prefix + working memory, ending at the stream's next position."""
    t = state.tokens
    mem = EncodedSegment(t.keys, t.values, t.positions, state.next_pos, state.max_pos, None)
    L = prefix.keys.shape[0]
    head = EncodedSegment(prefix.keys, prefix.values, layered(prefix.positions, L), prefix.next_pos,
                          prefix.max_pos, None)
    return concat_segments([head, mem], next_pos=state.next_pos, max_pos=state.max_pos)


def step(prefix: EncodedSegment, state: WorkingState, enc: ClipEncoding, novelty: float,
         policy: MemoryOptions) -> Step:
    clip = TokenSet.from_segment(enc.segment, state.next_serial)
    p0, n, c = prefix.length, state.tokens.length, clip.length
    k_ctx = torch.cat([prefix.keys, state.tokens.keys, clip.keys], dim=2)  # [L, Hkv, p0 + n + c, D]
    attn = proxy_attention(enc.proxy_queries, k_ctx, enc.proxy_keys)  # [L, Hkv, p0 + n + c]
    a_mem, a_clip = attn[..., p0:p0 + n], attn[..., p0 + n:]  # [L, Hkv, n], [L, Hkv, c]
    s_mem, s_clip = a_mem.sum(dim=1), a_clip.sum(dim=1)  # [L, n], [L, c]: KV heads combined
    use_protos = policy.prototypes and policy.policy == Policy.ATTENTION and enc.n_frames > 0
    protos = (frame_prototypes(clip, a_clip, enc.frame_ids, enc.n_frames)
              if use_protos else None)
    boost = novelty_boost(novelty, policy.novelty_weight)

    # working memory: old and new pruned together to the budget
    if n + c <= policy.working_tokens:
        tokens = TokenSet.cat([state.tokens.with_scores(s_mem), clip.with_scores(s_clip * boost)])
    else:
        parts = [state.tokens, clip] + ([protos] if protos is not None else [])
        scores = [s_mem, s_clip * boost] + ([protos.score * boost] if protos is not None else [])
        tokens = in_arrival_order(prune(TokenSet.cat(parts), torch.cat(scores, dim=1), policy.working_tokens, policy))
    new_state = WorkingState(tokens, enc.segment.next_pos, max(state.max_pos, enc.segment.max_pos),
                             state.next_serial + c, state.next_frame + enc.n_frames)
    return Step(new_state, chunk_of(clip, s_clip, protos, enc, policy), (state.next_serial, state.next_serial + c))


def chunk_of(clip: TokenSet, s_clip: torch.Tensor, protos: TokenSet | None, enc: ClipEncoding,
             policy: MemoryOptions) -> TokenSet | FeatureSet:
    """The clip compressed to `chunk_tokens` per layer (KV), or to its top visual embeddings (features)."""
    if policy.chunk_format == ChunkFormat.FEATURES:
        total = s_clip.sum(dim=0)  # [c] over layers
        feats = FeatureSet(enc.embeds, enc.segment.positions.to(torch.int64), clip.serial[0], total)
        keep = select(total[None], policy.chunk_tokens, policy.policy)[0]  # [b]
        return feats.take(keep)
    if clip.length <= policy.chunk_tokens:
        return clip.with_scores(s_clip)
    parts, scores = [clip], [s_clip]
    if protos is not None:
        parts.append(protos)
        scores.append(protos.score)
    return in_arrival_order(prune(TokenSet.cat(parts), torch.cat(scores, dim=1), policy.chunk_tokens, policy))


def prune(candidates: TokenSet, attention: torch.Tensor, budget: int, policy: MemoryOptions) -> TokenSet:
    """candidates with attention scores [L, N] -> at most `budget` per layer, the scores mixed with the
    candidates' value novelty first when the policy asks for it (attention policy only)."""
    scores = attention
    if policy.redundancy_weight > 0 and policy.policy == Policy.ATTENTION:
        novelty = value_novelty(candidates.values, arrival_key(candidates.serial), policy.redundancy_window)  # [L, N]
        scores = mix_scores(attention, novelty, policy.redundancy_weight)
    return compress_tokens(candidates, scores, budget, policy.policy)


def absorb(state: WorkingState, chunks: list[TokenSet], policy: MemoryOptions, next_pos: int, max_pos: int,
           next_serial: int, next_frame: int) -> WorkingState:
    """An approximate working memory for a stream resumed from a snapshot older than its newest chunk, where the
    clips after it cannot be encoded again (live sources, pushes): the chunks stored since the snapshot (each its
    clip's best tokens, with the scores they were kept with) pruned together with the snapshot to the budget,
    and the stream's counters after its newest chunk. Exact answers need the clips; this keeps what the chunks
    kept of them."""
    parts = [state.tokens] + [c for c in chunks if c.length]
    tokens = TokenSet.cat(parts) if len(parts) > 1 else state.tokens
    if tokens.length > policy.working_tokens:
        tokens = in_arrival_order(compress_tokens(tokens, tokens.score, policy.working_tokens, policy.policy))
    else:
        tokens = in_arrival_order(tokens)
    return WorkingState(tokens, next_pos, max_pos, next_serial, next_frame)
