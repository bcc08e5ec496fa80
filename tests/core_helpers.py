"""Helpers shared by the sequence-core tests (S4, S5, TSSM-XL)."""
import torch

TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
CPLX = {torch.float64: torch.complex128, torch.float32: torch.complex64}


def resets(B, T):
    """is_first with a reset mid-chunk (row 0), at t=0, mid and at the last step (row 1), and two
    consecutive resets plus a late one (row 2)."""
    f = torch.zeros(B, T, dtype=torch.bool)
    f[0, 9] = True
    f[1, 0] = f[1, 20] = f[1, T - 1] = True
    f[2, 5] = f[2, 6] = f[2, T - 7] = True
    return f


def step_core(model, g, is_first, state):
    """Recurrent mode over a whole sequence: (h (B, T, D), final state)."""
    hs = []
    for t in range(g.shape[1]):
        h, state = model.step(g[:, t], state, is_first[:, t])
        hs.append(h)
    return torch.stack(hs, 1), state


def assert_close(a, b, tol):
    for x, y in zip(a, b) if isinstance(a, list) else [(a, b)]:
        assert (x - y).abs().max().item() < tol, (x - y).abs().max().item()
