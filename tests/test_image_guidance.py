"""Checks of the image-guidance stand-in (redge_mini.book.tasks.image_guidance, chapter 11).

Independent references: the patch grid against explicit slicing, the ReMDM bridge against its
closed-form transition probabilities (Monte Carlo with binomial tolerances), the decoder against
the table look-up of its own code vectors and the mean image (errors measured on held-out
digits), classifier-free guidance against its formula, and guided against unguided sampling of
the same images.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from redge_mini.book.datasets import load_mnist_5k
from redge_mini.book.experiments import image_guidance as experiment
from redge_mini.book.experiments import summary as summary_module
from redge_mini.book.experiments import train_image_models as train_script
from redge_mini.book.experiments.verdicts import read_tuning, read_units, read_verdicts
from redge_mini.book.tasks.image_guidance import (
    MODELS_FILE,
    N_CODES,
    PRIOR_FILE,
    SEQ_LEN,
    SamplerConfig,
    _adam_update,
    accuracy,
    cfg_log_probs,
    class_log_prob,
    code_usage,
    encode,
    guide_configs,
    guide_images,
    linear_schedule,
    load_image_models,
    patches,
    remdm_bridge,
    unpatch,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small tensors: one thread is faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    return load_image_models()


@pytest.fixture(scope="module")
def test_digits():
    data = load_mnist_5k(binarize=False, seed=0)
    return torch.as_tensor(data.x_test), torch.as_tensor(data.y_test)


def test_patches_follow_the_grid_and_invert():
    images = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))
    tiles = patches(images)
    assert tiles.shape == (3, SEQ_LEN, 16)
    # token 7 * r + c is the 4 x 4 block at rows 4r.., columns 4c..
    for r, c in [(0, 0), (2, 5), (6, 6)]:
        torch.testing.assert_close(tiles[:, 7 * r + c],
                                   images[:, 4 * r:4 * r + 4, 4 * c:4 * c + 4].reshape(3, 16))
    torch.testing.assert_close(unpatch(tiles), images)
    with pytest.raises(ValueError, match="images"):
        patches(torch.zeros(2, 27, 28))


def test_codebook_is_large_and_used(models, test_digits):
    images, _ = test_digits
    assert models.codebook.shape == (N_CODES, 16) and N_CODES >= 256
    tokens = encode(images, models.codebook)
    assert tokens.shape == (len(images), SEQ_LEN)
    # 24,500 held-out patches: k-means gives every code at least one training patch, and a code
    # owning p of the training patches is missing from the test patches with probability about
    # exp(-24500 p); codes of the blank background and of strokes alike should appear
    used = code_usage(tokens)
    assert used >= 0.8 * N_CODES, f"only {used} of {N_CODES} codes occur on held-out digits"
    assert used == models.meta["codebook"]["codes_used_test"]


def test_decoder_beats_the_table_look_up_on_held_out_digits(models, test_digits):
    images, _ = test_digits
    tokens = encode(images, models.codebook)
    decoded = models.decode_tokens(tokens).reshape(-1, 784)
    assert decoded.shape == images.shape and 0 <= float(decoded.min()) <= float(
        decoded.max()) <= 1
    mse = float(((decoded - images) ** 2).mean())
    lookup = float(((unpatch(models.codebook[tokens]).reshape(-1, 784) - images) ** 2).mean())
    mean_image = float(((images - images.mean(0)) ** 2).mean())
    # the look-up error is the best a per-patch table can do with these codes; the non-linear
    # decoder must be clearly better (it sees neighbouring codes), and far from the mean image
    assert mse < 0.9 * lookup, (mse, lookup)
    assert mse < 0.1 * mean_image
    # the decoder is non-linear in the one-hot input: decode(mix) != mix of decodes
    a = F.one_hot(tokens[:1], N_CODES).float()
    b = F.one_hot(tokens[1:2], N_CODES).float()
    with torch.no_grad():
        mixed = models.decoder(0.5 * (a + b))
        average = 0.5 * (models.decoder(a) + models.decoder(b))
    assert float((mixed - average).abs().max()) > 1e-2


def test_classifiers_read_decoded_digits(models, test_digits):
    images, labels = test_digits
    decoded = models.decode_tokens(encode(images, models.codebook))
    # 500 test digits: the standard error of an accuracy near 0.95 is about 0.01
    assert accuracy(models.reward, decoded, labels) >= 0.9
    assert accuracy(models.judge, decoded, labels) >= 0.85


def test_remdm_bridge_matches_its_transition_probabilities():
    generator = torch.Generator().manual_seed(0)
    n, mask = 200_000, N_CODES
    x = torch.where(torch.rand(n, generator=generator) < 0.3, torch.tensor(5), torch.tensor(mask))
    draw = torch.full((n,), 9)
    revealed = x != mask
    for sigma in (0.0, 0.5, 1.0):
        y = remdm_bridge(x, draw, 0.3, 0.6, sigma, mask, generator)
        remasked = float((y[revealed] == mask).float().mean())
        unmasked = float((y[~revealed] == 9).float().mean())
        expected_remask = sigma * 0.4
        expected_unmask = 1 - (1 - sigma) * 0.4 / 0.7 - sigma * 0.4
        # binomial standard errors with ~60k and ~140k cells: below 0.003; tolerance 0.01
        assert remasked == pytest.approx(expected_remask, abs=0.01)
        assert unmasked == pytest.approx(expected_unmask, abs=0.01)
        assert float((y != mask).float().mean()) == pytest.approx(0.6, abs=0.01)
        assert bool((y[revealed & (y != mask)] == 5).all())  # kept cells keep their code
    final = remdm_bridge(x, draw, 0.6, 1.0, 1.0, mask, generator)
    assert not bool((final == mask).any())
    alphas = linear_schedule(20)
    assert len(alphas) == 20 and float(alphas[0]) == pytest.approx(1e-4) and alphas[-1] == 1


def test_classifier_free_guidance_formula(models):
    prior = models.prior
    generator = torch.Generator().manual_seed(1)
    x = torch.randint(0, N_CODES, (4, SEQ_LEN), generator=generator)
    x[:, ::2] = prior.mask_id
    cond = torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        plain = cfg_log_probs(prior, x, cond, 0.0)
        guided = cfg_log_probs(prior, x, cond, 3.0)
        manual = torch.log_softmax(4 * prior(x, cond) - 3 * prior(
            x, torch.full_like(cond, prior.n_classes)), -1)
    torch.testing.assert_close(plain, prior(x, cond))
    torch.testing.assert_close(guided, manual)
    torch.testing.assert_close(guided.exp().sum(-1), torch.ones(4, SEQ_LEN))
    # revealed cells keep their code with probability one
    assert bool((guided[:, 1::2].argmax(-1) == x[:, 1::2]).all())
    assert float(guided[:, 1::2].max(-1).values.min()) > -1e-4


def test_reward_gradient_matches_finite_differences(models):
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(2, SEQ_LEN, N_CODES, generator=generator, dtype=torch.float64)
    x = (x / x.sum(-1, keepdim=True)).requires_grad_(True)
    m64 = load_image_models()
    for module in (m64.decoder, m64.reward):
        module.double()
    target = torch.tensor([1, 7])
    reward = class_log_prob(m64, x, target)
    assert bool((reward <= 0).all())
    (grad,) = torch.autograd.grad(reward.sum(), x)
    h = 1e-6
    for b, i, k in [(0, 0, 0), (1, 24, 100), (0, 48, 255)]:
        e = torch.zeros_like(x)
        e[b, i, k] = h
        with torch.no_grad():
            numeric = (class_log_prob(m64, x + e, target) - class_log_prob(m64, x - e, target))
        assert float(numeric.sum() / (2 * h)) == pytest.approx(float(grad[b, i, k]), abs=1e-6)
    with pytest.raises(ValueError, match="target"):
        class_log_prob(models, x.float().detach(), torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="one_hot"):
        class_log_prob(models, torch.zeros(2, SEQ_LEN, 3), target)


@pytest.fixture(scope="module")
def unguided(models):
    return guide_images(models, "st", n_per_class=2, n_inner=0, seed=0)


def test_unguided_samples_show_their_class_and_leave_the_reward_unsaturated(unguided):
    assert unguided.tokens.shape == (20, SEQ_LEN)
    assert int(unguided.tokens.max()) < N_CODES  # no mask left
    # the judge (never used for guidance) reads the requested class in most unguided samples
    assert float(unguided.per_image["judge_source"].mean()) >= 0.6
    # the reward asks for another class: unguided log p(target) sits far below its ceiling 0
    # (log 0.5 = -0.69 would already be a coin flip), so guidance has room to raise it
    reward = unguided.per_image["reward"]
    assert float(reward.mean()) < -3.0
    assert float(unguided.per_image["reward_hit"].mean()) <= 0.2
    assert float(unguided.per_image["kl"].max()) < 1e-4  # phi = prior logits


@pytest.mark.parametrize("estimator,knobs", [("st", {}), ("redge", {"t_1": 0.5, "n_steps": 3})])
def test_guidance_raises_the_reward(models, unguided, estimator, knobs):
    """Same 20 images (seed 0), N = 5 Adam steps per move against N = 0.

    The test asks for a mean gain in log p(target) above three standard errors of the 20 paired
    differences and above 1 nat; it fails if the estimator's gradient does not reach the codes.
    """
    guided = guide_images(models, estimator, n_per_class=2, n_inner=5, seed=0, knobs=knobs)
    assert torch.equal(guided.source, unguided.source)
    gain = guided.per_image["reward"] - unguided.per_image["reward"]
    se = float(gain.std() / math.sqrt(len(gain)))
    assert float(gain.mean()) > max(3 * se, 1.0), (float(gain.mean()), se)
    assert float(guided.per_image["kl"].mean()) > 0


def test_guidance_refuses_bad_input(models):
    with pytest.raises(ValueError, match="estimator"):
        guide_images(models, "nope", n_per_class=1, n_inner=1, seed=0)
    with pytest.raises(ValueError, match="sigma"):
        guide_images(models, "st", n_per_class=1, n_inner=1, seed=0, sigma=1.5)
    with pytest.raises(ValueError, match="t_1"):
        guide_images(models, "redge", n_per_class=1, n_inner=1, seed=0, knobs={"t_1": 2.0})


def test_weights_are_small_and_load_from_another_directory(tmp_path):
    for name in (PRIOR_FILE, MODELS_FILE):
        assert (REPO / "redge_mini" / "book" / "data" / name).stat().st_size <= 2 * 2**20
    code = ("from redge_mini.book.tasks.image_guidance import load_image_models\n"
            "m = load_image_models()\n"
            "print(m.prior.vocab_size, m.codebook.shape[0])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(N_CODES), str(N_CODES)]


def test_guide_configs_adam_matches_torch_and_rows_do_not_interact(models):
    # the written-out Adam with one learning rate per row is torch's Adam
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 5, generator=generator)
    lr = torch.tensor([0.3, 0.05, 1.0])
    params = [w[i].clone().requires_grad_(True) for i in range(3)]
    optimisers = [torch.optim.Adam([p], lr=float(r)) for p, r in zip(params, lr, strict=True)]
    mine, m, v = w.clone(), torch.zeros_like(w), torch.zeros_like(w)
    for step in range(1, 6):
        for p, opt in zip(params, optimisers, strict=True):
            opt.zero_grad()
            (p ** 3).sum().backward()
            opt.step()
        _adam_update(mine, 3 * mine ** 2, m, v, lr, step)
    torch.testing.assert_close(mine, torch.stack([p.detach() for p in params]))
    # a configuration's images do not depend on the configurations run beside it
    source = torch.arange(10)
    a = SamplerConfig("redge", {"n_steps": 3, "t_1": 0.5}, 0.5, 2)
    b = SamplerConfig("st", {}, 1.0, 3)
    u = SamplerConfig("st", {}, 0.5, 0)
    alone = guide_configs(models, [a], source=source, seed=4, n_steps=4, reward_scale=10.0)
    side = guide_configs(models, [b, a, u], source=source, seed=4, n_steps=4, reward_scale=10.0)
    assert torch.equal(alone["tokens"], side["tokens"][10:20])
    torch.testing.assert_close(alone["reward"], side["reward"][10:20])
    assert float(side["kl"][20:].abs().max()) < 1e-4  # unguided: phi = prior logits
    other = guide_configs(models, [a], source=source, seed=5, n_steps=4, reward_scale=10.0)
    assert not torch.equal(alone["tokens"], other["tokens"])  # another stream, other images


@pytest.fixture(scope="module")
def smoke_run(models, tmp_path_factory):
    """The smoke protocol for two estimators, with the seeds every stage used."""
    folder = tmp_path_factory.mktemp("ig")
    proto = experiment.protocol("full", smoke=True)
    seen = []
    sample = experiment._sample

    def spy(models, proto, series, *, n_images, seed):
        seen.append((inspect.stack()[1].function, n_images, seed))
        return sample(models, proto, series, n_images=n_images, seed=seed)

    experiment._sample = spy
    try:
        records = experiment.run(proto, ["st", "redge"], models=models, out=folder)
    finally:
        experiment._sample = sample
    return proto, folder, records, seen


def test_smoke_run_writes_the_four_tables_and_resumes(models, smoke_run):
    proto, folder, records, _ = smoke_run
    names = sorted(p.name for p in folder.glob("*.json"))
    assert names == ["full-smoke_eval_redge.json", "full-smoke_eval_st.json",
                     "full-smoke_fixed.json", "full-smoke_tune_redge.json",
                     "full-smoke_tune_st.json"]
    assert all(len(r["metadata"]["git_commit"]) == 40 for r in records)
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}
    again = experiment.run(proto, ["st", "redge"], models=models, out=folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")} == stamp
    assert [r["data"] for r in again] == [r["data"] for r in records]
    loaded = experiment.run(proto, ["st", "redge"], out=folder, load_only=True)
    assert [r["data"] for r in loaded] == [r["data"] for r in records]
    units = read_units("image_guidance", root=folder)
    series = {(u.estimator, u.knobs, u.budget) for u in units}
    # tuned st and redge at every budget, the authors' two at the headline budget, the
    # unguided sampler at every budget
    assert len(series) == 2 * len(proto.budgets) + 2 + len(proto.budgets)
    assert {u.unit for u in units} == {f"img{i:03d}" for i in range(proto.n_eval)}
    row = next(r for r in summary_module.read_summary("image_guidance", root=folder)
               if r.estimator == "st" and r.metric == "objective")
    st = next(r for r in records if r["config"]["kind"] == "eval"
              and r["data"]["estimator"] == "st")["data"]["budgets"][str(row.budget)]
    assert row.mean == pytest.approx(sum(st["objective"]) / len(st["objective"]))
    assert st["objective"][0] == pytest.approx(
        proto.reward_scale * st["reward"][0] - st["kl"][0], rel=1e-5, abs=1e-4)
    # ``fooled``, derived per image: the reward reads the target and the judge does not
    value = {(u.estimator, u.knobs, u.budget, u.unit, u.metric): u.value for u in units}
    fooled = [k for k in value if k[-1] == "fooled"]
    assert len(fooled) == len(series) * proto.n_eval
    for *key, _ in fooled:
        hit, judge = value[(*key, "reward_hit")], value[(*key, "judge_hit")]
        assert value[(*key, "fooled")] == float(hit == 1.0 and judge == 0.0)
    # --summarise rewrites the four tables from the stored records alone
    before = (folder / "verdicts.csv").read_text()
    (folder / "verdicts.csv").unlink()
    assert experiment.main(["--scale", "full", "--smoke", "--summarise",
                            "--out", str(folder)]) == 0
    assert (folder / "verdicts.csv").read_text() == before


def test_smoke_verdicts_recompute_from_units_by_a_paired_t_test(smoke_run):
    from scipy import stats

    proto, folder, _, _ = smoke_run
    units = read_units("image_guidance", root=folder)
    verdicts = read_verdicts("image_guidance", root=folder)
    assert {v.metric for v in verdicts} == {"objective", "judge_hit", "judge_source"}
    for metric in ("judge_hit", "judge_source"):
        assert {v.budget for v in verdicts if v.metric == metric} == {proto.headline_budget}
    assert {v.budget for v in verdicts if v.metric == "objective"} == set(proto.budgets)
    heads = [v for v in verdicts if v.headline]
    # the headline is the independent judge's hit rate, at the headline budget only
    assert heads and {v.budget for v in heads} == {proto.headline_budget}
    assert {v.metric for v in heads} == {"judge_hit"}
    assert all(not v.higher_is_better for v in verdicts if v.metric == "judge_source")
    assert all(v.margin == experiment.MARGINS[v.metric][0] for v in verdicts)

    def values(name, v):
        base, _, knobs = name.partition("[")
        found = {(u.estimator, u.knobs) for u in units if u.estimator == base
                 and u.metric == v.metric and u.budget == v.budget
                 and (not knobs or u.knobs == knobs[:-1])}
        assert len(found) == 1, (name, found)
        return {(u.seed, u.unit): u.value for u in units if (u.estimator, u.knobs) in found
                and u.metric == v.metric and u.budget == v.budget}

    checked = 0
    for v in verdicts:  # the smoke run's judge may read no target at all: every row
        a, b = values(v.estimator, v), values(v.rival, v)
        keys = sorted(set(a) & set(b))
        assert len(keys) == v.n_units == proto.n_eval
        x, y = [a[k] for k in keys], [b[k] for k in keys]
        d = [p - q for p, q in zip(x, y, strict=True)]
        assert v.diff == pytest.approx(sum(d) / len(d), abs=1e-9)
        if len(set(d)) > 1:
            test = stats.ttest_rel(x, y)
            low, high = test.confidence_interval(0.95)
            assert (v.ci_low, v.ci_high) == pytest.approx((low, high), rel=1e-9, abs=1e-9)
            assert v.p_value == pytest.approx(test.pvalue, rel=1e-9, abs=1e-12)
            checked += 1
        assert v.p_holm >= v.p_value - 1e-12
    assert checked >= 1


def test_smoke_tuning_is_equal_and_on_images_disjoint_from_evaluation(smoke_run):
    proto, folder, records, seen = smoke_run
    rows = read_tuning("image_guidance", root=folder)
    assert {r.estimator for r in rows} == {"st", "redge"}
    assert {(r.n_configs, r.n_runs) for r in rows} == {(proto.n_configs, proto.n_tune)}
    assert all("lr" in r.knobs_tuned.split(";") for r in rows)
    assert next(r for r in rows if r.estimator == "st").knobs_tuned == "lr"
    for record in records:
        if record["config"]["kind"] == "tune":
            data = record["data"]
            means = [m["objective"] for m in data["means"]]
            assert data["chosen"] == data["configs"][means.index(max(means))]
            assert next(r for r in rows if r.estimator == data["estimator"]).chosen == (
                summary_module.knob_string(data["chosen"]))
    streams = {}
    for caller, n_images, seed in seen:
        streams.setdefault(caller, set()).add((n_images, seed))
    # tuning images: stream seed + 1; evaluation (tuned, authors', unguided): stream seed
    assert streams["run_tuning"] == {(proto.n_tune, 1)}
    assert streams["run_evaluation"] == streams["run_fixed"] == {(proto.n_eval, 0)}


def test_projection_and_bad_input(models, tmp_path):
    full = experiment.protocol("full")
    assert full.n_eval >= 100 and full.n_tune >= 30 and full.budgets == (5, 10, 20)
    estimate = experiment.measure_throughput(experiment.protocol("full", smoke=True),
                                             device="cpu", models=models, rows=10)
    assert {"tuning", "evaluation", "fixed", "total"} <= set(estimate)
    assert estimate["total"] == pytest.approx(
        sum(estimate[k] for k in ("tuning", "evaluation", "fixed", "timing")))
    assert experiment.write_summary_csv(tmp_path, "full-smoke") is None  # nothing stored
    with pytest.raises(ValueError, match="budgets"):
        experiment.Protocol(scale="x", budgets=(10, 5))
    with pytest.raises(ValueError, match="n_eval"):
        experiment.Protocol(scale="x", n_eval=15)
    with pytest.raises(ValueError, match="lr"):
        guide_configs(models, [SamplerConfig("st", {}, 0.0, 1)], source=torch.arange(2),
                      seed=0)
    with pytest.raises(SystemExit):
        experiment.main(["--scale", "small", "--estimators", "st,nope", "--out", str(tmp_path)])


def test_training_script_smoke(tmp_path):
    train_script.main(["--smoke", "--out", str(tmp_path)])
    loaded = load_image_models(tmp_path)
    assert loaded.meta["config"]["prior"]["steps"] == 3
    assert loaded.prior.n_classes == 10 and loaded.prior.vocab_size == N_CODES
    with pytest.raises(SystemExit):
        train_script.main(["--smoke"])  # would overwrite the stored models
    with pytest.raises(FileNotFoundError, match="train_image_models"):
        load_image_models(tmp_path / "missing")


def test_reward_ensemble_is_the_normalised_geometric_mean(models):
    from redge_mini.book.tasks.image_guidance import DigitCNN, RewardEnsemble

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        other = DigitCNN().eval()
    pixels = torch.rand(4, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        one = RewardEnsemble([models.reward])(pixels)
        both = F.log_softmax(RewardEnsemble([models.reward, other])(pixels), -1)
        p, q = F.softmax(models.reward(pixels), -1), F.softmax(other(pixels), -1)
    assert torch.allclose(F.log_softmax(one, -1), F.log_softmax(models.reward(pixels), -1),
                          atol=1e-6)
    geometric = (p * q).sqrt()
    assert torch.allclose(both.exp(), geometric / geometric.sum(-1, keepdim=True), atol=1e-6)
    with pytest.raises(ValueError, match="members"):
        RewardEnsemble([])
    with pytest.raises(ValueError, match="noise"):
        train_script.train_classifier(other, pixels, torch.zeros(4, dtype=torch.long),
                                      epochs=1, batch_size=2, lr=1e-3,
                                      generator=torch.Generator(), noise=-0.1)


def test_reward_variants_read_each_image_with_both_rewards_and_the_judge(models):
    proto = experiment.protocol("full", smoke=True)
    variants = {"single": {}, "strong_kl": {"lam": 4.0}}
    data = experiment.run_reward_variants(models, proto, lr=1.0, budget=1, n_images=10,
                                          variants=variants)
    assert set(data["variants"]) == set(variants)
    single = data["variants"]["single"]
    # with the stored reward, its own reading is the stored reward's reading
    assert single["reward_hit"] == single["base_reward_hit"]
    assert single["fooled"] == [float(r == 1.0 and j == 0.0)
                                for r, j in zip(single["reward_hit"], single["judge_hit"],
                                                strict=True)]
    # the same requests: the unchanged reward and a stronger KL pay less KL
    kl = {k: sum(v["kl"]) for k, v in data["variants"].items()}
    assert kl["strong_kl"] < kl["single"]
    record = {"seed": 0, "data": data}
    units = experiment.variant_units(record)
    assert len(units) == len(variants) * len(experiment.VARIANT_METRICS) * 10
    rows = experiment.variant_verdicts(record)
    assert {v.metric for v in rows} == {"judge_hit", "fooled"} and len(rows) == 2
    with pytest.raises(ValueError, match="unknown keys"):
        experiment.run_reward_variants(models, proto, lr=1.0, budget=1, n_images=10,
                                       variants={"x": {"bogus": 1.0}})
