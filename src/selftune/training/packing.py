"""Training batches without padding and without computing a shared prompt prefix more than once.

Chats rendered with one template start with the same tokens: the system prompt and the opening
of the user turn (24 of the ~51 tokens of a short Q/A chat on the default model). A batch is laid
out as rows of ``[shared prefix][rest of example 1][rest of example 2]...``. Each example's own
tokens attend to the prefix and to themselves (causally), never to the other examples; their
position ids continue from the end of the prefix, so every token sees exactly the context and
the positions it has in the example alone. The loss, its gradient and the trained adapter are
therefore those of training on the padded batch, while the transformer computes each shared
prefix token once per row instead of once per example. An example's last token (the answer's
end-of-turn) is left out too: it is a target, but nothing attends to it or is predicted from
it.

The attention mask is an additive float mask of shape (rows, 1, L, L), which transformers
passes to attention as it is (both the eager and the SDPA implementations take it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from selftune.data.tokenize import IGNORE_INDEX, TokenizedExample

__all__ = ["ROW_TOKENS", "PackedBatch", "needed_length", "pack", "shared_prefix_length"]

# Rows are filled up to this many positions. Attention over a row costs ~L^2 (the mask does not
# skip blocks), while the prefix is computed once per row: at 256 positions the attention scores
# cost under a tenth of the linear layers on the default model, and a batch of short chats fits
# in one row.
ROW_TOKENS = 256

_SHARED = -1  # segment id of the prefix: every example of the row attends to it
_PAD = -2  # segment id of padding at a row's end: attends only to padding, read by nothing


@dataclasses.dataclass(frozen=True)
class PackedBatch:
    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L): each example's own positions, as if it stood alone
    attention_mask: torch.Tensor  # (R, 1, L, L) additive: 0 may attend, dtype's min may not
    loss_index: torch.Tensor  # (N,) indices into the flattened (R * L) positions
    targets: torch.Tensor  # (N,) the token each loss position predicts
    counts: list[int]  # loss positions per example, in the order the examples were given
    tokens: int  # the examples' tokens: what a padded batch computes, less the padding
    computed: int  # positions the transformer computes, padding at rows' ends excluded
    prefix: int = 0  # the shared prefix's length, at the start of every row
    spans: tuple[tuple[int, int, int], ...] = ()  # per example: row, own tokens' offset, needed

    def to(self, device: torch.device | str) -> PackedBatch:
        return dataclasses.replace(
            self,
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_index=self.loss_index.to(device),
            targets=self.targets.to(device),
        )

    def example_positions(self, index: int) -> torch.Tensor:
        """Flat indices (into the R * L positions) of example ``index``'s positions 0 to
        ``needed_length - 1``, in its own order: its row's shared prefix, then its own tokens.

        A position's hidden state depends only on the example's tokens up to it, so the states
        at these indices are the example's own, whatever else shares the batch.
        """
        row, offset, needed = self.spans[index]
        start = row * self.input_ids.shape[1]
        device = self.input_ids.device
        return torch.cat(
            [
                torch.arange(start, start + self.prefix, device=device),
                torch.arange(start + offset, start + offset + needed - self.prefix, device=device),
            ]
        )


def needed_length(example: TokenizedExample) -> int:
    """Positions up to the last one that predicts a loss-carrying token.

    The ones after it (the final end-of-turn token of a chat) influence no loss: nothing comes
    after them to attend to them, and nothing is predicted from them.
    """
    labels = example.labels
    for t in range(len(labels) - 2, -1, -1):
        if labels[t + 1] != IGNORE_INDEX:
            return t + 1
    return len(example.input_ids)


def shared_prefix_length(examples: Sequence[TokenizedExample]) -> int:
    """Leading tokens all examples share, leaving each at least one needed token of its own."""
    first = examples[0].input_ids
    limit = min(needed_length(e) for e in examples) - 1
    length = 0
    while length < limit and all(e.input_ids[length] == first[length] for e in examples):
        length += 1
    return length


def pack(
    examples: Sequence[TokenizedExample],
    pad_id: int,
    *,
    mask_dtype: torch.dtype = torch.float32,
    row_tokens: int = ROW_TOKENS,
) -> PackedBatch:
    """Lay ``examples`` out in rows that share their common prefix (see the module's doc).

    Loss positions come example after example, each in its own order: position t of an example
    carries a loss when its label at t + 1 is not ignored, as in next-token training.
    """
    if not examples:
        raise ValueError("no examples to pack")
    prefix = shared_prefix_length(examples)
    prefix_ids = examples[0].input_ids[:prefix]
    needed = [needed_length(e) for e in examples]
    capacity = max(row_tokens, max(needed))

    rows: list[list[int]] = []  # token ids
    segments: list[list[int]] = []  # _SHARED, _PAD or the example's index
    positions: list[list[int]] = []
    placed: list[tuple[int, int]] = []  # (row, offset of the example's own tokens)
    for index, example in enumerate(examples):
        own = example.input_ids[prefix : needed[index]]
        if not rows or len(rows[-1]) + len(own) > capacity:
            rows.append(list(prefix_ids))
            segments.append([_SHARED] * prefix)
            positions.append(list(range(prefix)))
        placed.append((len(rows) - 1, len(rows[-1])))
        rows[-1].extend(own)
        segments[-1].extend([index] * len(own))
        positions[-1].extend(range(prefix, prefix + len(own)))

    length = max(len(row) for row in rows)
    computed = sum(len(row) for row in rows)
    for ids, segment, position in zip(rows, segments, positions, strict=True):
        missing = length - len(ids)
        ids.extend([pad_id] * missing)
        segment.extend([_PAD] * missing)
        position.extend([0] * missing)

    loss_index: list[int] = []
    targets: list[int] = []
    counts: list[int] = []
    for example, (row, offset) in zip(examples, placed, strict=True):
        before = len(loss_index)
        for t in range(len(example.labels) - 1):
            target = example.labels[t + 1]
            if target == IGNORE_INDEX:
                continue
            in_row = t if t < prefix else offset + t - prefix
            loss_index.append(row * length + in_row)
            targets.append(target)
        counts.append(len(loss_index) - before)

    segment_ids = torch.tensor(segments)  # (R, L)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (R, q, k)
    to_shared = (segment_ids == _SHARED)[:, None, :]
    allowed = causal & (same | to_shared)
    mask = torch.zeros(allowed.shape, dtype=mask_dtype)
    mask.masked_fill_(~allowed, torch.finfo(mask_dtype).min)
    return PackedBatch(
        input_ids=torch.tensor(rows),
        position_ids=torch.tensor(positions),
        attention_mask=mask[:, None],
        loss_index=torch.tensor(loss_index, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        counts=counts,
        tokens=sum(len(e.input_ids) for e in examples),
        computed=computed,
        prefix=prefix,
        spans=tuple((row, offset, n) for (row, offset), n in zip(placed, needed, strict=True)),
    )
