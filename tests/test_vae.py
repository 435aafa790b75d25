"""Tests of the discrete VAE task against enumeration and independently written computations."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

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


def test_experiment_smoke_run_resumes_and_summarises(tmp_path) -> None:
    proto = experiment.protocol("small", smoke=True)
    records = experiment.run(proto, ["st", "redge"], out=tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["small-smoke_binary12_main.json", "small-smoke_cost.json"]
    stored = json.loads((tmp_path / names[0]).read_text())
    assert stored["config"]["n_latent"] == 12 and stored["metadata"]["device"] == "cpu"
    again = experiment.run(proto, ["st", "redge"], out=tmp_path)
    assert json.dumps([r["data"] for r in again]) == json.dumps([r["data"] for r in records])
    summary = experiment.summarise(again)
    rows = summary["main"]["binary12"]["rows"]
    assert [r["estimator"] for r in rows] == ["st", "redge"]
    metrics = stored["data"]["metrics"]
    for i in range(len(metrics["test_iw_nll"])):
        slack = 4 * metrics["se_test_iw_minus_exact"][i]
        assert metrics["test_exact_nll"][i] <= metrics["test_iw_nll"][i] + slack
    assert summary["cost"]["ratio_to_st"]["st"] == 1.0
    images = stored["data"]["images"]
    pictures = experiment.decode_images(images["reconstructions"], tuple(images["shape"]))
    assert pictures.shape == (2, 3, 28, 28) and 0 <= pictures.min() <= pictures.max() <= 1
    with pytest.raises(ValueError, match="different configuration"):
        experiment.run(proto, ["st", "redge"], out=tmp_path, seed=1)


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


def test_summary_csv_rows_and_paired_verdicts(tmp_path) -> None:
    from scipy import stats

    from redge_mini.book.experiments.summary import read_summary

    proto = replace(experiment.protocol("small", smoke=True), n_seeds=3)
    experiment.run(proto, ["st", "redge"], out=tmp_path)
    assert experiment.main(["--smoke", "--scale", "small", "--summarise",
                            "--out", str(tmp_path)]) == 0
    rows = read_summary("vae", root=tmp_path)
    stored = json.loads((tmp_path / "small-smoke_binary12_main.json").read_text())
    metrics, members = stored["data"]["metrics"], stored["data"]["members"]
    redge = [i for i, m in enumerate(members) if m["estimator"] == "redge"]
    row = next(r for r in rows if r.estimator == "redge" and r.metric == "train_neg_elbo")
    values = [metrics["train_neg_elbo_exact"][i] for i in redge]
    assert row.n_seeds == 3 and row.mean == pytest.approx(sum(values) / 3)
    half = stats.t.ppf(0.975, 2) * stats.sem(values)
    assert row.ci_low == pytest.approx(row.mean - half)
    assert row.budget == proto.n_epochs * (proto.n_train // proto.batch_size)
    gap = next(r for r in rows if r.estimator == "redge" and r.metric == "gap")
    # The stored metrics are rounded to 5 significant digits (about 0.01 nats here).
    assert gap.mean == pytest.approx(
        sum(metrics["test_neg_elbo"][i] - metrics["train_neg_elbo_exact"][i] for i in redge) / 3,
        abs=0.02)
    assert {r.metric for r in rows} >= {"train_neg_elbo", "test_neg_elbo_best_valid",
                                        "ms_per_step", "gap"}
    table = experiment.summarise(experiment.load_records(tmp_path, proto.scale))
    verdict = table["main"]["binary12"]["verdicts"][("train_neg_elbo_exact", "redge")]
    assert verdict["paired"] and verdict["rival"] == "st"
    st = [metrics["train_neg_elbo_exact"][i] for i, m in enumerate(members)
          if m["estimator"] == "st"]
    p_value = stats.ttest_rel(values, st).pvalue
    expected = "ties" if p_value >= 0.05 else ("wins" if sum(values) < sum(st) else "loses")
    assert verdict["verdict"] == expected
    assert "| budget |" in experiment.protocol_table(experiment.protocol("full"))


def test_experiment_cli_refuses_bad_input(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        experiment.main(["--smoke", "--estimators", "st,reinforce"])
    assert info.value.code == 2
    assert "unknown estimator" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiment.main(["--smoke", "--device", "tpu"])


def test_training_stops_when_asked() -> None:
    from redge_mini.book.tasks import TrainingInterrupted

    model = vae.EnsembleVAE(1, TINY)
    with pytest.raises(TrainingInterrupted):
        vae.train(model, [vae.Member("st")], torch.zeros(8, 6), stop=lambda: True)


def test_tuning_grows_past_an_edge_choice_and_the_summary_merges_the_rounds() -> None:
    members = [{"estimator": "gumbel", "knobs": {"tau": 0.5}},
               {"estimator": "gumbel", "knobs": {"tau": 1.0}},
               {"estimator": "redge", "knobs": {"n_steps": 3, "t_1": 0.5}},
               {"estimator": "redge", "knobs": {"n_steps": 5, "t_1": 0.5}}]
    tune = {"members": members, "valid_neg_elbo": [100.0, 101.0, 99.0, 98.0]}
    chosen, points = experiment.choose_grown([tune], ["gumbel", "redge"])
    assert chosen == {"gumbel": {"tau": 0.5}, "redge": {"n_steps": 5, "t_1": 0.5}}
    assert points == {"gumbel": [{"tau": 0.1667}], "redge": [{"n_steps": 9, "t_1": 0.5}]}
    grow = {"members": [{"estimator": "gumbel", "knobs": {"tau": 0.1667}},
                        {"estimator": "redge", "knobs": {"n_steps": 9, "t_1": 0.5}}],
            "valid_neg_elbo": [102.0, 97.0]}
    chosen, points = experiment.choose_grown([tune, grow], ["gumbel", "redge"])
    assert chosen == {"gumbel": {"tau": 0.5}, "redge": {"n_steps": 9, "t_1": 0.5}}
    assert points == {"redge": [{"n_steps": 17, "t_1": 0.5}]}  # still on the top edge
    # summarise joins the growth rounds to the tuning stage
    config = {"scale": "x", "latents": "binary12"}
    records = [{"name": "x_binary12_tune", "config": {**config, "stage": "tune"},
                "data": {**tune, "chosen": {"gumbel": {"tau": 0.5},
                                            "redge": {"n_steps": 5, "t_1": 0.5}}}},
               {"name": "x_binary12_grow1", "config": {**config, "stage": "grow"},
                "data": grow}]
    merged = experiment.summarise(records)["tune"]["binary12"]
    assert merged["valid_neg_elbo"] == [100.0, 101.0, 99.0, 98.0, 102.0, 97.0]
    assert merged["extended"] == grow["members"] and merged["chosen"] == chosen
