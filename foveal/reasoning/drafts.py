"""Draft tokens for greedy turns, so that one decoder pass can check several (`LocalEngine`).

A compact decoder's pass on two cores costs about the same for one token as for nine: it is
bound by dispatching its kernels, not by arithmetic. Greedy turns of an inspection model repeat
themselves ("Let me zoom in for a closer look.", the tool call's JSON, the analysis sentences),
so the tokens that followed the last few tokens the last time are a good guess at what follows
now. The engine feeds the guess after the token it chose, in one pass, and keeps the longest
prefix the model would have chosen itself, token by token, through the same per-token logic
(`foveal.reasoning.engine`); the rest is masked out of the cache. What the model says does not
change, only how many passes it takes. (Prompt-lookup or n-gram speculative decoding; here
the n-grams come from the engine's own earlier turns, learnt online, not from the prompt.)
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramDrafter:
    """The continuation that last followed each context of up to `n` generated tokens."""

    def __init__(self, n: int = 3, length: int = 8, capacity: int = 1 << 16) -> None:
        if n < 1 or length < 1 or capacity < 1:
            raise ValueError(f"a drafter needs n, length and capacity >= 1, got {n}, {length}, {capacity}")
        self.n, self.length, self.capacity = n, length, capacity
        self.table: dict[tuple[int, ...], tuple[int, ...]] = {}

    def _key(self, tokens: Sequence[int], end: int) -> tuple[int, ...]:
        return tuple(tokens[max(0, end - self.n):end])

    def propose(self, tokens: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` tokens (at most `length`) that may follow `tokens`, a turn so far; []
        when nothing is known about its last tokens."""
        if limit <= 0 or not tokens:
            return []
        return list(self.table.get(self._key(tokens, len(tokens)), ())[:min(limit, self.length)])

    def learn(self, tokens: Sequence[int]) -> None:
        """Remember what followed each context of a finished turn (the latest wins)."""
        if len(self.table) > self.capacity:  # a bound on memory; the table refills in a few turns
            self.table.clear()
        for end in range(1, len(tokens)):
            self.table[self._key(tokens, end)] = tuple(tokens[end:end + self.length])
