"""What one clip changed in a stream's working memory, and how to apply it again: the working memory is
persisted as a snapshot plus a log of these deltas, so a clip writes the tokens that entered, not the whole
memory (DESIGN.md, "move only what changed").

A step keeps, per layer, some tokens of the old working memory (each recognised by its serial, unique within a
layer) and some that entered (the clip's tokens and prototypes). A `WorkingDelta` holds, per layer, where each
token of the new memory comes from (`src`: an index into the old memory's layer, or the j-th entered token of the
layer as -1 - j), every token's new score (scores are recomputed each step), the entered tokens themselves
(ragged over layers, flattened layer-major) and the new counters. `apply(old, diff(old, new)) == new` bit for
bit: nothing is recomputed, every tensor is copied.

`diff` runs at the store write, where the memory goes to the host anyway: its one host sync is the number of
entered tokens (ragged by nature); the step itself stays free of syncs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from memory.layout import TokenSet
from memory.working import WorkingState


@dataclass(frozen=True)
class WorkingDelta:
    src: torch.Tensor  # [L, n] int32: >= 0 index into the old layer's tokens; < 0: -1 - j, the layer's j-th entered
    score: torch.Tensor  # [L, n] float32 every token's score in the new memory
    counts: torch.Tensor  # [L] int64 entered tokens per layer
    keys: torch.Tensor  # [Hkv, E, D] entered tokens' keys, layer-major (E = counts.sum())
    values: torch.Tensor  # [Hkv, E, D]
    positions: torch.Tensor  # [P, E] int64
    serial: torch.Tensor  # [E] int64
    base_serial: int  # the old memory's next_serial: a delta applies to exactly one state
    next_pos: int
    max_pos: int
    next_serial: int
    next_frame: int

    @property
    def entered(self) -> int:
        return int(self.serial.shape[0])

    @property
    def nbytes(self) -> int:
        """Tensor bytes (a stored delta adds its header)."""
        return sum(t.numel() * t.element_size() for t in (self.src, self.score, self.counts, self.keys, self.values,
                                                         self.positions, self.serial))

    def to(self, device: torch.device | str) -> "WorkingDelta":
        moved = {f: getattr(self, f).to(device) for f in ("src", "score", "counts", "keys", "values", "positions",
                                                         "serial")}
        return WorkingDelta(**moved, base_serial=self.base_serial, next_pos=self.next_pos, max_pos=self.max_pos,
                            next_serial=self.next_serial, next_frame=self.next_frame)


def working_write(before: WorkingState, after: WorkingState, since_snapshot: int | None, every: int,
                  deltas: bool) -> WorkingState | WorkingDelta | None:
    """What the store gets of the working memory with a chunk: a snapshot (the whole memory) every `every` chunks
    and whenever none is stored yet (`since_snapshot` None); in between the delta from `before` when `deltas`
    is on, else nothing (the stored memory then lags the newest chunk by up to `every` - 1 chunks)."""
    if since_snapshot is None or since_snapshot + 1 >= every:
        return after
    return diff(before, after) if deltas else None


class DeltaMismatch(ValueError):
    """A delta was applied to a working memory it was not taken from."""


def diff(old: WorkingState, new: WorkingState) -> WorkingDelta:
    """The delta that turns `old` into `new` (both on one device; `new` came from `old` by one step)."""
    o, n = old.tokens, new.tokens
    L, n1 = n.serial.shape
    n0 = o.length
    dev = n.serial.device
    if n0 > 0:
        s_sorted, perm = torch.sort(o.serial, dim=1)  # [L, n0]
        at = torch.searchsorted(s_sorted, n.serial).clamp_(max=n0 - 1)  # [L, n1]
        found = s_sorted.gather(1, at) == n.serial  # [L, n1] the token was in the old layer
        old_idx = perm.gather(1, at)  # [L, n1]
    else:
        found = torch.zeros(L, n1, dtype=torch.bool, device=dev)
        old_idx = torch.zeros(L, n1, dtype=torch.int64, device=dev)
    entered = ~found  # [L, n1]
    j = entered.to(torch.int64).cumsum(dim=1) - 1  # [L, n1] each entered token's number within its layer
    src = torch.where(found, old_idx, -1 - j).to(torch.int32)  # [L, n1]
    counts = entered.sum(dim=1)  # [L]
    keys = n.keys.permute(1, 0, 2, 3)[:, entered]  # [Hkv, E, D] layer-major (the one host sync: E)
    values = n.values.permute(1, 0, 2, 3)[:, entered]  # [Hkv, E, D]
    positions = n.positions.permute(1, 0, 2)[:, entered]  # [P, E]
    serial = n.serial[entered]  # [E]
    return WorkingDelta(src, n.score.to(torch.float32), counts, keys, values, positions, serial, old.next_serial,
                        new.next_pos, new.max_pos, new.next_serial, new.next_frame)


def apply(old: WorkingState, d: WorkingDelta) -> WorkingState:
    """The working memory after `d`, on `old`'s device. DeltaMismatch when `d` was not taken from `old`."""
    if d.base_serial != old.next_serial:
        raise DeltaMismatch(f"delta of the memory at serial {d.base_serial} applied to one at {old.next_serial}")
    o = old.tokens
    dev = o.keys.device
    d = d.to(dev)
    L, n1 = d.src.shape
    n0 = o.length
    hkv, _, D = d.keys.shape
    P = d.positions.shape[0]
    emax = int(d.counts.max()) if L else 0
    # the entered tokens laid out per layer, padded to the longest layer: [L, Hkv, emax, D] and friends
    starts = torch.cumsum(d.counts, 0) - d.counts  # [L]
    slot = torch.arange(emax, device=dev)[None]  # [1, emax]
    valid = slot < d.counts[:, None]  # [L, emax]
    flat = torch.where(valid, starts[:, None] + slot, 0)  # [L, emax] index into the flat entered tokens
    if d.entered == 0:  # nothing entered: index an empty flat tensor safely
        flat = flat.clamp(max=0)
        keys = o.keys.new_zeros(L, hkv, emax, D)
        values = o.values.new_zeros(L, hkv, emax, D)
        positions = torch.zeros(L, P, emax, dtype=torch.int64, device=dev)
        serial = torch.zeros(L, emax, dtype=torch.int64, device=dev)
    else:
        keys = d.keys[:, flat].permute(1, 0, 2, 3)  # [L, Hkv, emax, D]
        values = d.values[:, flat].permute(1, 0, 2, 3)
        positions = d.positions[:, flat].permute(1, 0, 2)  # [L, P, emax]
        serial = d.serial[flat]  # [L, emax]
    added = TokenSet(keys.to(o.keys.dtype), values.to(o.values.dtype), positions, serial,
                     torch.zeros(L, emax, dtype=torch.float32, device=dev))
    src = d.src.to(torch.int64)
    idx = torch.where(src >= 0, src, n0 + (-1 - src))  # [L, n1] into old + entered
    tokens = TokenSet.cat([o, added]).take(idx).with_scores(d.score)
    return WorkingState(tokens, d.next_pos, d.max_pos, d.next_serial, d.next_frame)
