import torch


def st_tempered(logits, tau=2.0, hard=False, dim=-1, *, generator=None):
    """Straight-Through with softmax(logits / tau) in the backward pass."""
    soft = torch.softmax(logits / tau, dim)
    if not hard:
        return soft
    probs = torch.softmax(logits, dim).movedim(dim, -1)
    rows = probs.reshape(-1, probs.shape[-1])
    index = torch.multinomial(rows, 1, generator=generator)
    one_hot = torch.zeros_like(rows).scatter(-1, index, 1.0)
    one_hot = one_hot.reshape(probs.shape).movedim(-1, dim)
    return (one_hot - soft).detach() + soft


st_tempered.knobs = {"tau": (0.05, 20.0)}
