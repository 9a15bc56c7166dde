"""EM across processes (torchrun / DDP): 2 gloo ranks learn what 1 rank learns.

The 2-rank runs are spawned with ``torch.multiprocessing`` and a ``file://`` rendezvous
(what ``torchrun --nproc_per_node 2`` sets up through the environment), on the tiny
manifold problem of tests/test_em.py, with CPU threads pinned to one per process.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from paper.manifold import contrastive_problem

from galprism.diffusion import DiffusionPrior, Trainer, VESchedule
from galprism.diffusion.samplers import SamplerConfig
from galprism.em import EMConfig, RunStore, View, posterior_samples, run_em
from galprism.em.config import ESTEP_SAMPLER
from galprism.em.distributed import Distributed, auto_device, observation_generators
from galprism.gaussian import GaussianPrior

WORLD = 2


def _views() -> list[View]:
    problem = contrastive_problem(2, 64, seed=3)
    return [
        View.from_source_sum(v.name, problem.source_names, v.y, v.noise_var, v.operator)
        for v in problem.views
    ]


def _config(**kw) -> EMConfig:
    base = dict(
        sources=["source1", "source2"],
        shape=[5],
        gaussian_laps=1,
        diffusion_laps=1,
        gaussian_rank=3,
        # 63 of 64 observations and batches of 31: the shards of 2 ranks differ in size.
        estep_observations=63,
        estep_batch=20,
        sampler=replace(ESTEP_SAMPLER, method="pc", steps=4, cg_iterations=3),
        reject_chi2=2.0,
        redraws=1,
        train_steps=20,
        train_batch=31,
        backbone_kwargs={"hidden": 16, "blocks": 1, "emb_features": 8},
        initial_variance="auto",
        grid_samples=0,
        seed=5,
    )
    base.update(kw)
    return EMConfig(**base)


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("seconds", "time")} for h in history]


def _recorder(out: list):
    def hook(record, priors, samples):
        out.append({s: x.clone() for s, x in samples.items()})
        return {}

    return hook


def _forbid_writes(monkeypatch_targets) -> None:
    def refuse(*a, **k):
        raise AssertionError("a rank other than 0 wrote to the run folder")

    for owner, name in monkeypatch_targets:
        setattr(owner, name, refuse)


def _worker(rank: int, root: str) -> None:
    """One rank: a full run, a run stopped after lap 2, and its resumption."""
    torch.set_num_threads(1)
    tdist.init_process_group(
        "gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=WORLD
    )
    try:
        if rank != 0:
            from galprism.priorset import PriorSet

            _forbid_writes(
                [
                    (RunStore, "save_checkpoint"),
                    (RunStore, "append_history"),
                    (RunStore, "_write_json"),
                    (RunStore, "_trim_history"),
                    (PriorSet, "save"),
                ]
            )
        views = _views()
        seen: list = []
        full = run_em(views, _config(), f"{root}/full", progress=False, hook=_recorder(seen))
        cut = run_em(views, _config(), f"{root}/cut", progress=False, stop_after=2)
        assert cut is None
        resumed = run_em(views, _config(), f"{root}/cut", progress=False)
        torch.save(
            {
                "samples": seen,
                "priors": [p.state_dict() for p in full.priors.priors],
                "resumed": [p.state_dict() for p in resumed.priors.priors],
                "gaussians": [p.state_dict() for p in full.gaussian_priors.priors],
            },
            f"{root}/rank{rank}.pt",
        )
    finally:
        tdist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(str(root),), nprocs=WORLD, join=True)
    return root, [torch.load(root / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    root = tmp_path_factory.mktemp("one")
    seen: list = []
    result = run_em(
        _views(),
        _config(),
        root / "run",
        progress=False,
        hook=_recorder(seen),
        distributed=Distributed(rank=0, world_size=1, enabled=True),
    )
    return result, seen


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=atol, msg=k)


def test_two_gloo_ranks_learn_what_one_rank_learns(two_ranks, one_rank):
    """Two ranks sharing the E-step observations and the M-step batches must run the same
    laps, draw the same posterior samples for every observation (each observation's noise
    comes from the run seed and its index, not from the rank), and end with the same
    Gaussian and diffusion priors as one rank, up to float summation order. A failure means
    a shard was lost or duplicated, a draw depends on the rank, or the gradient average over
    the ranks is not the full-batch gradient."""
    root, ranks = two_ranks
    single, single_samples = one_rank
    history = [json.loads(line) for line in (root / "full" / "history.jsonl").open()]
    assert len(history) == len(single.history) == 4
    a, b = _strip(history), _strip(single.history)
    for ha, hb in zip(a, b, strict=True):
        assert {k: ha[k] for k in ("lap", "phase", "learning", "estep_samples")} == {
            k: hb[k] for k in ("lap", "phase", "learning", "estep_samples")
        }
        assert ha["rejected"] == hb["rejected"] and ha["redrawn"] == hb["redrawn"]
        for view, chi2 in ha["chi2"].items():
            assert chi2 == pytest.approx(hb["chi2"][view], rel=1e-4)
        for s, loss in ha["loss"].items():
            assert loss == pytest.approx(hb["loss"][s], rel=1e-4)
    # Lap 1 samples the initial Gaussian: the work is deterministic, the draws equal.
    assert len(ranks[0]["samples"]) == len(single_samples) == 4
    _close(ranks[0]["samples"][0], single_samples[0], atol=1e-6)
    for lap in range(4):
        _close(ranks[0]["samples"][lap], single_samples[lap], atol=1e-5)
        # Every rank holds all samples after the E-step, identically.
        for s, x in ranks[1]["samples"][lap].items():
            assert torch.equal(x, ranks[0]["samples"][lap][s])
    for got, want in zip(ranks[0]["priors"], single.priors.priors, strict=True):
        _close(got, want.state_dict(), atol=1e-5)
    for got, want in zip(ranks[0]["gaussians"], single.gaussian_priors.priors, strict=True):
        _close(got, want.state_dict(), atol=1e-5)
    # Both ranks end with the same weights: nothing drifted apart.
    for p0, p1 in zip(ranks[0]["priors"], ranks[1]["priors"], strict=True):
        assert all(torch.equal(p0[k], p1[k]) for k in p0)


def test_rank_zero_alone_writes_one_run_folder_and_a_resume_repeats_the_run(two_ranks):
    """Rank 1 refuses every write (the worker makes each write method raise there), so the
    folder is rank 0's: one checkpoint and history line per lap and the prior folders. A
    2-rank run stopped after lap 2 and resumed (all ranks loading rank 0's checkpoint) must
    end with the uninterrupted run's priors; otherwise a rank resumed from other state."""
    root, ranks = two_ranks
    for run in ("full", "cut"):
        assert sorted(p.name for p in (root / run / "checkpoints").iterdir()) == [
            f"lap-{i:04d}.pt" for i in range(1, 5)
        ]
        assert len((root / run / "history.jsonl").read_text().splitlines()) == 4
        assert (root / run / "prior" / "prior.json").is_file()
        assert (root / run / "prior-gaussian" / "prior.json").is_file()
    for rank in ranks:
        for got, want in zip(rank["resumed"], rank["priors"], strict=True):
            assert all(torch.equal(got[k], want[k]) for k in want)


def test_observation_samples_do_not_depend_on_their_batch():
    """With per-observation seeds, observation i's E-step sample must be the same whether it
    is drawn alone, in another shard or in another batch; if not, the samples would change
    with the number of processes."""
    view = _views()[1]
    priors = [
        GaussianPrior(torch.zeros(5), torch.zeros(5, 0), torch.zeros(0), 1.0, VESchedule())
        for _ in view.sources
    ]
    index = torch.arange(12)
    kw = dict(generator=torch.Generator().manual_seed(0), observation_seed=7)
    sampler = SamplerConfig("pc", 4, cg_iterations=3, trust=4.0)
    whole = posterior_samples(view, priors, index, sampler, batch=12, **kw).x
    parts = torch.cat(
        [
            posterior_samples(view, priors, index[lo:hi], sampler, batch=b, **kw).x
            for lo, hi, b in ((0, 5, 2), (5, 12, 7))
        ]
    )
    torch.testing.assert_close(parts, whole, rtol=1e-5, atol=1e-6)
    other = posterior_samples(
        view, priors, index, sampler, batch=12, **{**kw, "observation_seed": 8}
    ).x
    assert not torch.allclose(other, whole)


@pytest.mark.parametrize("n", [0, 1, 5, 63, 64])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_cover_every_row_exactly_once(n, world):
    """The ranks' shards must together be exactly range(n), in order and without overlap;
    otherwise an observation is sampled twice or never."""
    rows = []
    for rank in range(world):
        lo, hi = Distributed(rank=rank, world_size=world, enabled=True).shard(n)
        assert 0 <= hi - lo <= -(-n // world)
        rows.extend(range(lo, hi))
    assert rows == list(range(n))


def test_observation_generators_follow_seed_index_and_attempt_only():
    """Each observation's generator must depend on (seed, index, attempt) alone: the same
    triple gives the same draws, and another index or another attempt other draws."""
    a = observation_generators(3, torch.tensor([4, 9]))
    b = observation_generators(3, torch.tensor([9, 4]))
    assert torch.equal(torch.randn(3, generator=a[0]), torch.randn(3, generator=b[1]))
    c = observation_generators(3, torch.tensor([4]), draw=1)[0]
    d = observation_generators(3, torch.tensor([4]))[0]
    assert not torch.equal(torch.randn(3, generator=c), torch.randn(3, generator=d))


def test_without_torchrun_em_stays_a_single_stream_run(monkeypatch):
    """Without WORLD_SIZE, EM must run undistributed (one random stream, as before); under
    torchrun with one process it runs the distributed form without a process group; and
    --device auto must not ask for a GPU that is not there."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    plain = Distributed.from_env("cpu")
    assert not plain.enabled and plain.world_size == 1 and plain.is_main
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    single = Distributed.from_env("cpu")
    assert single.enabled and single.world_size == 1 and not single.owns_group
    assert not tdist.is_initialized()
    if not torch.cuda.is_available():
        assert auto_device() == "cpu"


def _tiny_prior() -> DiffusionPrior:
    torch.manual_seed(0)
    return DiffusionPrior(
        [5], "mlp", {"features": 5, "hidden": 16, "blocks": 1, "emb_features": 8}, VESchedule()
    )


@pytest.mark.parametrize("amp, dtype", [("on", torch.bfloat16), (True, torch.float32)])
def test_bf16_autocast_training_runs_and_its_loss_is_finite(amp, dtype):
    """amp="on" must run the network's forward pass in bfloat16 (here on the CPU, as CUDA
    runs by default) with a finite loss and float32 weights; the default (bf16 on CUDA
    only) must keep CPU training in float32."""
    prior = _tiny_prior()
    seen = []
    linear = next(m for m in prior.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    trainer = Trainer(prior, amp=amp, warmup=1)
    data = torch.randn(64, 5)
    loss = trainer.fit(data, 5, 16, generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(torch.tensor(loss))
    assert set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in prior.parameters())


def test_bad_amp_mode_is_refused():
    """An unknown amp mode must be refused by name instead of silently training in fp32."""
    with pytest.raises(ValueError, match="amp"):
        Trainer(_tiny_prior(), amp="fp8")
