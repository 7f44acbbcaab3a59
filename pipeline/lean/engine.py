"""A lean NumPy inference engine for the FastGRNN sequence classifier (cell + linear head).

No torch import: a Serve replica, a script embedding a router, or a machine without PyTorch runs
an exported model with NumPy alone. Equal to the torch model (eval mode) to float32 rounding.

The work per request is a few thousand multiply-adds, so what costs is the number of NumPy calls
(each ~0.3–1 µs), not arithmetic. The cell is rewritten so one step is seven calls on
preallocated buffers, using σ(a) = (1 + tanh(a/2)) / 2 so ONE tanh gives both the gate and the
candidate:

    pre  = W x + U h                          (W x for every step at once, before the loop)
    t    = tanh((pre + b_z) / 2)              z = σ(pre + b_z) = (1 + t) / 2
    h̃    = tanh(pre + b_h)
    h'   = (σ(ζ)(1 − z) + σ(ν)) h̃ + z h  =  (c − k t) h̃ + ½(1 + t) h,   k = σ(ζ)/2, c = k + σ(ν)

One buffer v = [t | t | h̃ | h] (4H) holds a step: v[:3H] = tanh(h Ũ + G_t) with
Ũ = [Uᵀ/2 | Uᵀ/2 | Uᵀ] and G_t = [(W x_t + b_z)/2 (twice) | W x_t + b_h]; then
[p | q] = v[:2H] ⊙ α + β (p = c − k t, q = ½(1 + t)), v[:2H] ⊙ v[2H:] = [p h̃ | q h], and
h' = their two halves added, written straight into v[3H:]. A model trained only on single steps
(h₀ = 0, so U h₀ = 0) has no U at all and answers only single steps.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
# Above this many rows a step multiplies by U's low-rank factors instead of the full U (fewer
# flops); below it the full U is one call instead of two.
FACTORED_MIN_ROWS = 64


def _sigmoid(v: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.float64(v))))


class LeanFastGRNNClassifier:
    """FastGRNN + linear head from a float32 weight dict with the torch model's state_dict names
    (`rnn.cell.W` or `rnn.cell.W1`/`W2`, `rnn.cell.U` or `U1`/`U2` — absent for a single-step
    model —, `rnn.cell.bias_gate`, `bias_update`, `zeta`, `nu`, `head.weight`, `head.bias`)."""

    def __init__(self, weights: dict, hidden_size: int, input_size: int, num_classes: int):
        def get(name):
            return np.asarray(weights[f"rnn.cell.{name}"], dtype=np.float64)

        H, D = hidden_size, input_size
        self.hidden_size, self.input_size, self.num_classes = H, D, num_classes
        W = get("W") if "rnn.cell.W" in weights else get("W1") @ get("W2")
        if W.shape != (H, D):
            raise ValueError(f"W is {W.shape}, expected ({H}, {D})")
        b_z, b_h = get("bias_gate"), get("bias_update")
        s_zeta, s_nu = _sigmoid(get("zeta").item()), _sigmoid(get("nu").item())
        k = s_zeta / 2
        # one input projection for the three parts of a step: [ (Wx+b_z)/2 | (Wx+b_z)/2 | Wx+b_h ]
        self.w3 = np.ascontiguousarray(np.concatenate([W.T / 2, W.T / 2, W.T], axis=1), dtype=F32)
        self.b3 = np.concatenate([b_z / 2, b_z / 2, b_h]).astype(F32)
        self.alpha = np.concatenate([np.full(H, -k), np.full(H, 0.5)]).astype(F32)
        self.beta = np.concatenate([np.full(H, k + s_nu), np.full(H, 0.5)]).astype(F32)
        # the batched path needs t only once, gate and candidate in two contiguous halves:
        # [ (Wx+b_z)/2 ; Wx+b_h ] as [2, B, H]
        self.w2 = np.ascontiguousarray(np.stack([W.T / 2, W.T]), dtype=F32)  # [2, D, H]
        self.b2 = np.stack([b_z / 2, b_h])[:, None, :].astype(F32)  # [2, 1, H]
        self.k, self.c = F32(k), F32(k + s_nu)
        self.recurrent = any(f"rnn.cell.{n}" in weights for n in ("U", "U1"))
        self.u3 = self.u2 = self.u_factors = None
        if self.recurrent:
            U = get("U") if "rnn.cell.U" in weights else get("U1") @ get("U2")
            self.u3 = np.ascontiguousarray(np.concatenate([U.T / 2, U.T / 2, U.T], axis=1), dtype=F32)
            self.u2 = np.ascontiguousarray(np.stack([U.T / 2, U.T]), dtype=F32)  # [2, H, H]
            if "rnn.cell.U1" in weights:  # h (U1 U2)ᵀ = (h U2ᵀ) U1ᵀ
                u1t, u2t = get("U1").T, get("U2").T
                self.u_factors = (
                    np.ascontiguousarray(u2t, dtype=F32),
                    np.ascontiguousarray(np.stack([u1t / 2, u1t]), dtype=F32),  # [2, r, H]
                )
        self.head_w = np.ascontiguousarray(np.asarray(weights["head.weight"], dtype=F32).T)
        self.head_b = np.asarray(weights["head.bias"], dtype=F32)
        if self.head_w.shape != (H, num_classes):
            raise ValueError(f"head.weight is {self.head_w.shape[::-1]}, expected ({num_classes}, {H})")

    # -- the recurrence ---------------------------------------------------------------------
    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=F32)
        if x.ndim == 2:
            x = x[:, None, :]
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"expected input [B, T, {self.input_size}] or [B, {self.input_size}], got {x.shape}"
            )
        if x.shape[1] > 1 and not self.recurrent:
            raise ValueError(
                f"this model was trained on single steps (it has no recurrent matrix U); got {x.shape[1]} steps"
            )
        return x

    def _hidden_one(self, x: np.ndarray) -> np.ndarray:
        """Last hidden state [H] of one sequence x [T, D], in seven NumPy calls a step."""
        H = self.hidden_size
        g = np.dot(x, self.w3)
        g += self.b3
        v = np.empty(4 * H, dtype=F32)
        pre, ab, tail, h = v[: 3 * H], v[: 2 * H], v[2 * H :], v[3 * H :]
        np.tanh(g[0], out=pre)  # h₀ = 0: no U h
        np.multiply(ab, self.alpha, out=ab)
        ab += self.beta
        v[3 * H :] = 0.0
        np.multiply(ab, tail, out=ab)
        np.add(v[:H], v[H : 2 * H], out=h)
        u3 = self.u3
        for t in range(1, len(g)):
            np.dot(h, u3, out=pre)
            pre += g[t]
            np.tanh(pre, out=pre)
            np.multiply(ab, self.alpha, out=ab)
            ab += self.beta
            np.multiply(ab, tail, out=ab)
            np.add(v[:H], v[H : 2 * H], out=h)
        return h

    def _hidden_batch(self, x: np.ndarray) -> np.ndarray:
        """Last hidden states [B, H] of x [B, T, D]: per step one tanh over the contiguous
        [gate ; candidate] pre-activations [2, B, H], the update in place."""
        H, B = self.hidden_size, len(x)
        xt = np.ascontiguousarray(x.transpose(1, 0, 2))[:, None]  # [T, 1, B, D]
        g = np.matmul(xt, self.w2)  # [T, 2, B, H]
        g += self.b2
        factored = self.u_factors is not None and B >= FACTORED_MIN_ROWS
        h = np.zeros((B, H), dtype=F32)
        tmp = np.empty((B, H), dtype=F32)
        for t in range(x.shape[1]):
            s = g[t]
            if t > 0:
                s += (
                    np.matmul(h @ self.u_factors[0], self.u_factors[1]) if factored else np.matmul(h, self.u2)
                )
            np.tanh(s, out=s)
            gate, cand = s[0], s[1]
            # h' = (c − k t) h̃ + ½(1 + t) h  =  c h̃ + ½ h + t (½ h − k h̃)
            np.multiply(cand, self.k, out=tmp)
            h *= 0.5
            np.subtract(h, tmp, out=tmp)
            tmp *= gate
            h += tmp
            cand *= self.c
            h += cand
        return h

    def hidden(self, x) -> np.ndarray:
        """Last hidden state [B, H] (what the head reads) of x [B, T, D] or [B, D]."""
        x = self._check(x)
        if len(x) == 1:
            return self._hidden_one(x[0])[None, :]
        return self._hidden_batch(x)

    def head(self, h: np.ndarray) -> np.ndarray:
        """Logits [..., C] of hidden states [..., H] (the linear head)."""
        out = np.dot(h, self.head_w)
        out += self.head_b
        return out

    def logits(self, x) -> np.ndarray:
        """Logits [B, C] of x [B, T, D] or [B, D] (float32)."""
        return self.head(self.hidden(x))

    def logits_one(self, x: np.ndarray) -> np.ndarray:
        """Logits [C] of ONE sequence x [T, D] (already float32 and validated): the fastest path."""
        return self.head(self._hidden_one(x))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 for the answer's precision."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
