"""Tests of the discrete VAE task against enumeration and independently written computations."""

from __future__ import annotations

import csv
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli

from redge_mini.book.experiments import vae as experiment
from redge_mini.book.tasks import vae
from redge_mini.score_function import sample_onehot

TINY = vae.VAEConfig(n_latent=3, n_classes=3, n_pixels=6, hidden=(5, 4), batch_size=4,
                     n_epochs=1, eval_every=1)


def tiny_model(config: vae.VAEConfig = TINY, n_models: int = 2, seed: int = 0) -> vae.EnsembleVAE:
    model = vae.EnsembleVAE(n_models, config, generator=torch.Generator().manual_seed(seed))
    return model.double()


def tiny_data(n: int = 5, n_pixels: int = 6, seed: int = 1) -> torch.Tensor:
    return (torch.rand(n, n_pixels, generator=torch.Generator().manual_seed(seed)) > 0.5).double()


@torch.no_grad()
def decode_one(model: vae.EnsembleVAE, r: int, z: torch.Tensor) -> torch.Tensor:
    """Model ``r``'s decoder applied with explicit per-layer F.linear (not the batched path)."""
    h = z.flatten()
    layers = list(model.decoder)
    for i, layer in enumerate(layers):
        h = F.linear(h, layer.weight[r].T, layer.bias[r, 0])
        if i < len(layers) - 1:
            h = F.leaky_relu(h, model.config.negative_slope)
    return h


@torch.no_grad()
def encode_one(model: vae.EnsembleVAE, r: int, x: torch.Tensor) -> torch.Tensor:
    h = x
    layers = list(model.encoder)
    for i, layer in enumerate(layers):
        h = F.linear(h, layer.weight[r].T, layer.bias[r, 0])
        if i < len(layers) - 1:
            h = F.leaky_relu(h, model.config.negative_slope)
    return h.view(model.config.n_latent, model.config.n_classes)


def all_codes(n_latent: int, n_classes: int) -> list[torch.Tensor]:
    return [F.one_hot(torch.tensor(c), n_classes).double()
            for c in itertools.product(range(n_classes), repeat=n_latent)]


@torch.no_grad()
def brute_log_joint(model, r, x, z) -> torch.Tensor:
    """log p(x | z) + log p(z) with torch.distributions, one configuration at a time."""
    log_px = Bernoulli(logits=decode_one(model, r, z)).log_prob(x).sum()
    return log_px - model.config.n_latent * math.log(model.config.n_classes)


def test_ensemble_members_are_independent_models() -> None:
    model = tiny_model()
    x = tiny_data()
    logits = model.encode(x)
    for r in range(2):
        for i in range(len(x)):
            torch.testing.assert_close(logits[r, i], encode_one(model, r, x[i]))
    # The gradient of model 1's loss does not reach model 0's weights.
    z = vae.exact_sample(logits, torch.Generator().manual_seed(0))
    loss = vae.negative_elbo(model, x.expand(2, *x.shape), z, logits)
    loss[1].sum().backward()
    for layer in [*model.encoder, *model.decoder]:
        assert float(layer.weight.grad[0].abs().max()) == 0.0
        assert float(layer.weight.grad[1].abs().max()) > 0.0


def test_kl_to_uniform_matches_enumeration() -> None:
    logits = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    log_q = torch.log_softmax(logits, dim=-1)
    kl = 0.0
    for z in all_codes(3, 3):
        log_qz = float((z * log_q).sum())
        kl += math.exp(log_qz) * (log_qz + 3 * math.log(3))
    assert float(vae.kl_to_uniform(logits)) == pytest.approx(kl, rel=1e-10)


def test_enumerate_latents_lists_every_configuration_once() -> None:
    codes = vae.enumerate_latents(3, 3)
    assert codes.shape == (27, 3, 3)
    assert bool((codes.sum(-1) == 1).all())
    assert len({tuple(c.argmax(-1).tolist()) for c in codes}) == 27
    part = vae.enumerate_latents(3, 3, start=5, stop=9)
    torch.testing.assert_close(part, codes[5:9])


@pytest.mark.parametrize("config", [
    TINY,
    vae.VAEConfig(n_latent=4, n_classes=2, n_pixels=6, hidden=(5,), batch_size=4),
])
def test_exact_log_likelihood_equals_brute_force_logsumexp(config: vae.VAEConfig) -> None:
    model = tiny_model(config)
    x = tiny_data()
    exact = vae.exact_log_likelihood(model, x, chunk=7)     # chunks that do not divide K^L
    codes = all_codes(config.n_latent, config.n_classes)
    for r in range(2):
        for i in range(len(x)):
            terms = torch.stack([brute_log_joint(model, r, x[i], z) for z in codes])
            assert float(exact[r, i]) == pytest.approx(float(torch.logsumexp(terms, 0)),
                                                       rel=1e-10)


def test_exact_log_likelihood_refuses_large_latent_spaces() -> None:
    model = vae.EnsembleVAE(1, vae.VAEConfig(n_latent=48, n_classes=2))
    with pytest.raises(ValueError, match="max_configurations"):
        vae.exact_log_likelihood(model, torch.zeros(1, 784))


def enumerated_neg_elbo(model, r, x) -> float:
    """E_q[-log p(x|z)] + KL(q || p), summing over every latent configuration."""
    log_q = torch.log_softmax(encode_one(model, r, x), dim=-1)
    total = 0.0
    for z in all_codes(model.config.n_latent, model.config.n_classes):
        log_qz = float((z * log_q).sum())
        total += math.exp(log_qz) * (log_qz - float(brute_log_joint(model, r, x, z)))
    return total


def test_negative_elbo_with_exact_samples_matches_enumeration() -> None:
    model = tiny_model()
    x = tiny_data(n=3)
    n = 20_000
    logits = model.encode(x).detach()                                 # (R=2, N=3, L, K)
    z = sample_onehot(logits, n, generator=torch.Generator().manual_seed(3))  # (n, 2, 3, L, K)
    z = z.permute(1, 0, 2, 3, 4).reshape(2, n * 3, 3, 3)
    rep_logits = logits[:, None].expand(2, n, 3, 3, 3).reshape(2, n * 3, 3, 3)
    values = vae.negative_elbo(model, x.repeat(n, 1), z, rep_logits).detach().view(2, n, 3)
    for r in range(2):
        for i in range(3):
            mean, se = float(values[r, :, i].mean()), float(values[r, :, i].std()) / math.sqrt(n)
            assert abs(mean - enumerated_neg_elbo(model, r, x[i])) < 4 * se + 1e-9


def test_importance_weighted_bound_is_below_log_likelihood_and_tightens() -> None:
    model = tiny_model()
    x = tiny_data(n=4)
    exact = vae.exact_log_likelihood(model, x)
    elbo = torch.tensor([[-enumerated_neg_elbo(model, r, x[i]) for i in range(4)]
                         for r in range(2)], dtype=torch.float64)
    assert bool((elbo <= exact + 1e-12).all())
    generator = torch.Generator().manual_seed(4)
    repeats = 400
    means = {}
    for s in (1, 10, 100):
        draws = torch.stack([vae.importance_weighted_bound(model, x, s, generator=generator,
                                                           max_rows=64)
                             for _ in range(repeats)])
        means[s] = (draws.mean(0), draws.std(0) / math.sqrt(repeats))
    mean1, se1 = means[1]
    assert bool(((mean1 - elbo).abs() < 4 * se1 + 1e-9).all())       # S = 1 is the ELBO
    for s in (1, 10, 100):
        mean, se = means[s]
        assert bool((mean <= exact + 4 * se).all())
    assert bool((means[10][0] > means[1][0]).all())
    assert bool((means[100][0] > means[10][0] - 4 * means[100][1]).all())
    gap_100 = (exact - means[100][0]).abs().max()
    assert float(gap_100) < float((exact - elbo).min())


def test_training_lowers_the_loss_and_records_a_history() -> None:
    config = vae.VAEConfig(n_latent=8, n_classes=2, n_pixels=784, hidden=(64, 32),
                           batch_size=50, n_epochs=6, eval_every=3, lr=2e-3)
    from redge_mini.book.datasets import load_mnist_5k

    data = load_mnist_5k(n_train=400, n_valid=100, n_test=100, seed=0).tensors()
    members = [vae.Member("st"), vae.Member("redge", {"t_1": 0.5}), vae.Member("redge", {}, 1)]
    generator = torch.Generator().manual_seed(0)
    model = vae.EnsembleVAE(3, config, generator=generator)
    history = vae.train(model, members, data["x_train"], x_valid=data["x_valid"],
                        generator=generator, monitor=100)
    assert history.train_loss.shape == (3, 6)
    assert history.eval_epochs.tolist() == [3, 6]
    assert history.valid_neg_elbo.shape == (3, 2)
    assert bool((history.train_loss[:, -1] < history.train_loss[:, 0] - 20).all())
    metrics = vae.evaluate(model, members, x_train=data["x_train"], x_test=data["x_test"],
                           x_valid=data["x_valid"], iw_samples=8, generator=generator)
    assert set(metrics) == {"train_neg_elbo_own", "train_neg_elbo_exact", "valid_neg_elbo",
                            "test_neg_elbo", "test_iw_nll", "test_exact_nll",
                            "se_test_elbo_minus_iw", "se_test_iw_minus_exact"}
    slack = 4 * metrics["se_test_iw_minus_exact"]
    assert bool((metrics["test_exact_nll"] <= metrics["test_iw_nll"] + slack).all())
    slack = 4 * metrics["se_test_elbo_minus_iw"]
    assert bool((metrics["test_iw_nll"] <= metrics["test_neg_elbo"] + slack).all())


def test_members_and_training_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown estimator"):
        vae.Member("softmax")
    with pytest.raises(ValueError, match="t_1"):
        vae.Member("redge", {"t_1": 1.5})
    with pytest.raises(ValueError, match="tau"):
        vae.Member("reinmax", {"tau": 0.5})
    with pytest.raises(ValueError, match="n_classes"):
        vae.VAEConfig(n_classes=1)
    model = vae.EnsembleVAE(2, TINY)
    with pytest.raises(ValueError, match="members"):
        vae.train(model, [vae.Member("st")], torch.zeros(8, 6))
    with pytest.raises(ValueError, match="batch_size"):
        vae.train(model, [vae.Member("st")] * 2, torch.zeros(3, 6))


def test_step_timing_reports_every_estimator() -> None:
    config = vae.VAEConfig(n_latent=4, n_classes=2, n_pixels=6, hidden=(8,), batch_size=4)
    seconds = vae.time_training_steps([("st", {}), ("redge", {"t_1": 0.5})],
                                      torch.zeros(10, 6), config, n_steps=2, n_warmup=1)
    assert set(seconds) == {"st", "redge"} and all(s > 0 for s in seconds.values())


def test_paired_replicates_share_weights_and_batches_but_not_the_estimator() -> None:
    members = [vae.Member("st", {}, 0), vae.Member("st", {}, 1), vae.Member("gumbel", {}, 0),
               vae.Member("gumbel", {}, 1)]
    model = vae.EnsembleVAE(4, TINY, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in model.parameters()]
    vae.share_initialisation(model, members)
    for old, new in zip(before, model.parameters(), strict=True):
        torch.testing.assert_close(new[[0, 1, 0, 1]], old[[0, 1, 0, 1]])
        torch.testing.assert_close(new[2], old[0])
        torch.testing.assert_close(new[3], old[1])
        assert not torch.equal(new[0], new[1])
    # The mini-batch order is drawn per replicate label, not per member.
    order = vae.epoch_order(torch.tensor([0, 1, 0, 1, 2]), 50, torch.Generator().manual_seed(0))
    assert torch.equal(order[0], order[2]) and torch.equal(order[1], order[3])
    assert not torch.equal(order[0], order[1]) and not torch.equal(order[0], order[4])
    assert all(sorted(row.tolist()) == list(range(50)) for row in order)


def test_best_validation_test_elbo_reads_the_right_evaluation() -> None:
    history = vae.History(
        epochs=torch.arange(1, 7), train_loss=torch.zeros(2, 6),
        eval_epochs=torch.tensor([2, 4, 6]), train_neg_elbo_exact=torch.zeros(2, 3),
        valid_neg_elbo=torch.tensor([[5.0, 3.0, 4.0], [9.0, 8.0, 7.0]]), seconds=0.0,
        test_neg_elbo=torch.tensor([[50.0, 30.0, 40.0], [90.0, 80.0, 70.0]]))
    epoch, test = history.at_best_validation()
    assert epoch.tolist() == [4, 6] and test.tolist() == [30.0, 70.0]
    with pytest.raises(ValueError, match="histories"):
        vae.History(epochs=torch.arange(1, 2), train_loss=torch.zeros(1, 1),
                    eval_epochs=torch.tensor([1]), train_neg_elbo_exact=torch.zeros(1, 1),
                    valid_neg_elbo=torch.zeros(1, 0), seconds=0.0).at_best_validation()


def test_experiment_cli_refuses_bad_input(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        experiment.main(["--smoke", "--estimators", "st,softmax"])
    assert info.value.code == 2
    assert "unknown estimator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiment.main(["--smoke", "--device", "tpu"])


def test_training_stops_when_asked() -> None:
    from redge_mini.book.tasks import TrainingInterrupted

    model = vae.EnsembleVAE(1, TINY)
    with pytest.raises(TrainingInterrupted):
        vae.train(model, [vae.Member("st")], torch.zeros(8, 6), stop=lambda: True)


def test_ensemble_adam_follows_torch_adam_per_model() -> None:
    """Model r of EnsembleAdam takes torch.optim.Adam's steps at its own lr[r]."""
    torch.manual_seed(0)
    w = torch.randn(3, 4, 5, dtype=torch.float64)
    lr = torch.tensor([1e-3, 1e-2, 3e-1], dtype=torch.float64)
    ens = w.clone().requires_grad_()
    opt = vae.EnsembleAdam([ens], lr)
    singles = [w[r].clone().requires_grad_() for r in range(3)]
    refs = [torch.optim.Adam([p], lr=float(lr[r])) for r, p in enumerate(singles)]
    target = torch.randn(4, 5, dtype=torch.float64)
    for _ in range(5):
        opt.zero_grad()
        ((ens - target) ** 3).abs().sum().backward()
        opt.step()
        for p, o in zip(singles, refs, strict=True):
            o.zero_grad()
            ((p - target) ** 3).abs().sum().backward()
            o.step()
    torch.testing.assert_close(ens.detach(), torch.stack([p.detach() for p in singles]))


def test_seed_fixes_the_initial_weights_whatever_trains_beside_it() -> None:
    config = vae.VAEConfig(n_latent=2, n_classes=2, n_pixels=6, hidden=(5,), batch_size=4,
                           n_epochs=2, eval_every=2)
    alone = vae.EnsembleVAE(1, config)
    vae.initialise_by_seed(alone, [vae.Member("st", {}, 7)])
    mixed_members = [vae.Member("gumbel", {}, 3), vae.Member("st", {}, 7, lr=1e-3)]
    mixed = vae.EnsembleVAE(2, config)
    vae.initialise_by_seed(mixed, mixed_members)
    for p, q in zip(alone.parameters(), mixed.parameters(), strict=True):
        torch.testing.assert_close(p[0], q[1])
        assert not torch.equal(q[0], q[1])
    with pytest.raises(ValueError, match="lr"):
        vae.Member("st", lr=-1.0)


SMOKE_ESTIMATORS = ["st", "gumbel", "redge", "reinforce"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae")
    proto = experiment.protocol("full", smoke=True)
    records = experiment.run(proto, SMOKE_ESTIMATORS, out=folder, cost=False)
    assert experiment.write_summary_csv(folder, proto.scale) is not None
    return proto, folder, records


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_smoke_run_writes_units_verdicts_and_tuning(smoke_run) -> None:
    from scipy import stats

    proto, folder, records = smoke_run
    names = sorted(p.name for p in folder.glob("*.json"))
    assert names == sorted([f"full-smoke_tune_{e}.json" for e in SMOKE_ESTIMATORS]
                           + [f"full-smoke_eval_{e}.json" for e in SMOKE_ESTIMATORS]
                           + ["full-smoke_eval_st_authors.json"])
    stored = json.loads((folder / "full-smoke_eval_redge.json").read_text())
    assert stored["metadata"]["scale"] == "full-smoke"
    assert len(stored["metadata"]["git_commit"]) == 40
    units = read_csv(folder / "units.csv")
    verdicts = read_csv(folder / "verdicts.csv")
    tuning = read_csv(folder / "tuning.csv")
    index: dict[tuple, dict] = {}
    for u in units:
        key = (u["setting"], u["estimator"], u["knobs"], u["metric"], u["budget"])
        index.setdefault(key, {})[(u["seed"], u["unit"])] = float(u["value"])
    heads = [v for v in verdicts if v["headline"] == "True"]
    # every pair of the 4 tuned series and the authors' ST, on the headline metric
    assert len(heads) == 10 and {v["metric"] for v in heads} == {"test_neg_elbo_best_valid"}
    assert {v["metric"] for v in verdicts} == {"test_neg_elbo_best_valid", "test_iw_nll",
                                               "train_neg_elbo_exact"}
    assert any("reinforce" in (v["estimator"], v["rival"]) for v in heads)
    # REINFORCE's stages say how many codes per image it drew; the pathwise ones do not
    rloo = json.loads((folder / "full-smoke_eval_reinforce.json").read_text())
    assert rloo["config"]["n_samples"] == experiment.SCORE_SAMPLES["reinforce"] == 2
    assert "n_samples" not in stored["config"]
    def series(v, name):
        est, _, knobs = name.partition("[")
        keys = [k for k in index if k[0] == v["setting"] and k[1] == est
                and k[3] == v["metric"] and k[4] == v["budget"]
                and (not knobs or k[2] == knobs.rstrip("]"))]
        assert len(keys) == 1, name
        return index[keys[0]]

    for v in heads:
        a, b = series(v, v["estimator"]), series(v, v["rival"])
        shared = sorted(set(a) & set(b))
        assert len(shared) == int(v["n_units"]) == len(proto.eval_seeds)
        test = stats.ttest_rel([a[k] for k in shared], [b[k] for k in shared])
        assert float(v["p_value"]) == pytest.approx(test.pvalue, rel=1e-6)
        low, high = test.confidence_interval()
        assert float(v["ci_low"]) == pytest.approx(low, rel=1e-6)
        assert float(v["ci_high"]) == pytest.approx(high, rel=1e-6)
        assert float(v["margin"]) == 1.0
    assert any(v["estimator"].startswith("st[") or v["rival"].startswith("st[")
               for v in heads)
    # equal tuning: the same configurations x runs for every estimator, lr tuned everywhere
    assert sorted(t["estimator"] for t in tuning) == sorted(SMOKE_ESTIMATORS)
    assert {int(t["n_configs"]) * int(t["n_runs"]) for t in tuning} == {
        proto.n_configs * len(proto.tune_seeds)}
    assert all("lr" in t["knobs_tuned"].split(";") for t in tuning)
    # tuning seeds and evaluation seeds are disjoint
    tune_seeds = {int(u["seed"]) for u in units if u["setting"] == "tuning"}
    eval_seeds = {int(u["seed"]) for u in units if u["setting"] != "tuning"}
    assert tune_seeds == set(proto.tune_seeds) and eval_seeds == set(proto.eval_seeds)
    assert not tune_seeds & eval_seeds
    # the evaluation runs the tuned choice
    chosen = {t["estimator"]: t["chosen"] for t in tuning}
    assert {u["knobs"] for u in units if u["estimator"] == "redge"
            and u["setting"] != "tuning"} == {chosen["redge"]}


def test_smoke_run_resumes_and_refuses_another_configuration(smoke_run) -> None:
    proto, folder, records = smoke_run
    again = experiment.run(proto, SMOKE_ESTIMATORS, out=folder, cost=False)
    assert json.dumps([r["data"] for r in again]) == json.dumps([r["data"] for r in records])
    with pytest.raises(ValueError, match="different configuration"):
        experiment.run(proto, SMOKE_ESTIMATORS, out=folder, seed=1, cost=False)
    images = records[-1]["data"]["images"]
    pictures = experiment.decode_images(images["reconstructions"], (proto.n_images, 28, 28))
    assert 0 <= pictures.min() <= pictures.max() <= 1


def test_protocol_declares_equal_tuning_and_enough_seeds() -> None:
    full = experiment.protocol("full")
    assert len(full.eval_seeds) >= 10 and len(full.tune_seeds) >= 3
    assert not set(full.eval_seeds) & set(full.tune_seeds)
    assert full.n_train == 4000 and full.batch_size == 200
    sizes = {len(experiment.tuning_configs(full, e)) for e in experiment.ESTIMATOR_NAMES}
    assert sizes == {experiment.N_CONFIGS}
    for e in experiment.ESTIMATOR_NAMES:
        assert all("lr" in c for c in experiment.tuning_configs(full, e))
    assert [m.name for m in experiment.METRICS if m.headline] == ["test_neg_elbo_best_valid"]
    assert {m.name for m in experiment.METRICS} == {"test_neg_elbo_best_valid", "test_iw_nll",
                                                    "train_neg_elbo_exact"}
    table = experiment.protocol_table(full)
    assert "| seeds | not known |" in table and "4,000 of the 5,000" in table
    with pytest.raises(ValueError, match="overlap"):
        experiment.Protocol(**{**full.__dict__, "tune_seeds": (0, 1, 2)})


def test_rloo_surrogate_gives_the_exact_gradient_in_expectation() -> None:
    """The encoder's RLOO gradient plus the decoder's and the KL's is unbiased for the gradient
    of E_q[-ELBO], computed by enumerating the 27 codes. R identical models in one ensemble give
    R independent gradient draws in one backward pass."""
    from scipy import stats

    n_draws = 4000
    single = tiny_model(n_models=1, seed=3)
    model = vae.EnsembleVAE(n_draws, TINY).double()
    with torch.no_grad():
        for target, source in zip(model.parameters(), single.parameters(), strict=True):
            target.copy_(source.expand_as(target))
    x = tiny_data(n=4)
    # exact: E_q[-log p(x|z)] + KL, by enumeration, on the single model
    codes = torch.stack(all_codes(3, 3))                                  # (27, L, K)
    logits = single.encode(x)[0]                                          # (B, L, K)
    log_qz = torch.einsum("mlk,blk->bm", codes, torch.log_softmax(logits, -1))
    pixels = single.decode(codes[None])[0]                                # (27, D)
    log_px = x @ pixels.T - F.softplus(pixels).sum(-1)                    # (B, 27)
    exact = (-(log_qz.exp() * log_px).sum(-1) + vae.kl_to_uniform(logits)).mean()
    want = torch.autograd.grad(exact, list(single.parameters()))
    members = [vae.Member("reinforce", {}, 0, n_samples=2)] * n_draws
    xs = x.expand(n_draws, *x.shape)
    loss = vae.score_function_elbo(model, xs, model.encode(xs), members,
                                   torch.Generator().manual_seed(4)).mean(dim=1).sum()
    draws = torch.autograd.grad(loss, list(model.parameters()))
    n_entries = sum(w.numel() for w in want)
    # every entry's mean within a Bonferroni-corrected normal quantile (family error 1e-3)
    limit = stats.norm.ppf(1 - 1e-3 / (2 * n_entries))
    worst = 0.0
    for g, w in zip(draws, want, strict=True):
        se = g.std(dim=0) / math.sqrt(n_draws)
        z = (g.mean(dim=0) - w[0]).abs() / se.clamp_min(1e-12)
        worst = max(worst, float(z.max()))
        # the encoder's gradient is noisy (score function), the decoder's too (sampled codes)
        assert float(w.abs().max()) > 0
    assert worst < limit, (worst, limit)


def test_rloo_spends_the_decoder_evaluations_of_one_code_per_image() -> None:
    config = vae.VAEConfig(n_latent=2, n_classes=2, n_pixels=6, hidden=(5,), batch_size=4,
                           n_epochs=2, eval_every=2)
    x = tiny_data(n=10).float()
    counts = {}
    for name, samples in (("st", 1), ("reinforce", 2)):
        model = vae.EnsembleVAE(2, config, generator=torch.Generator().manual_seed(0))
        seen = {"decoder": 0, "encoder": 0}

        def hook(key, seen=seen):
            def count(module, inputs, output):
                if torch.is_grad_enabled():               # training steps, not evaluations
                    seen[key] += inputs[0].shape[1]
            return count

        model.decoder[0].register_forward_hook(hook("decoder"))
        model.encoder[0].register_forward_hook(hook("encoder"))
        members = [vae.Member(name, {}, r, n_samples=samples) for r in range(2)]
        history = vae.train(model, members, x, generator=torch.Generator().manual_seed(1),
                            monitor=4, order_seed=0)
        assert history.train_loss.shape == (2, 2) and torch.isfinite(history.train_loss).all()
        counts[name] = dict(seen)
    steps = 2 * (10 // 4)
    assert counts["st"] == {"decoder": steps * 4, "encoder": steps * 4}
    assert counts["reinforce"] == {"decoder": steps * 4, "encoder": steps * 2}


def test_score_function_members_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="n_samples must be 1"):
        vae.Member("st", n_samples=2)
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        vae.Member("reinforce")
    model = vae.EnsembleVAE(2, TINY)
    x = torch.zeros(8, 6)
    with pytest.raises(ValueError, match="mixes pathwise"):
        vae.train(model, [vae.Member("st"), vae.Member("reinforce", n_samples=2)], x)
    with pytest.raises(ValueError, match="multiple of n_samples"):
        vae.train(model, [vae.Member("reinforce", n_samples=3)] * 2, x)
    with pytest.raises(ValueError, match="pathwise estimators only"):
        vae.time_training_steps([("reinforce", {})], x, TINY, n_steps=1)


def test_estimator_set_does_not_follow_the_registry() -> None:
    """An estimator registered before the experiment is imported (an ablation, say) does not
    join the VAE's stages: the set is written out in the protocol."""
    import subprocess
    import sys

    code = ("import torch; from redge_mini import Knob, register\n"
            "def hot(logits, tau=1.0, hard=False, dim=-1, *, generator=None):\n"
            "    return torch.softmax(logits / tau, dim)\n"
            "register('hot', hot, {'tau': Knob(1.0, 0.0, 10.0, low_inclusive=False)})\n"
            "from redge_mini.book.experiments import vae\n"
            "print(','.join(vae.ESTIMATOR_NAMES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out.split(",") == ["st", "gumbel", "reinmax", "redge", "redge_cov", "reindge",
                              "reinforce"]
