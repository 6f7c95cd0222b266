"""Non-contrastive SSL losses: each against a value computed here by explicit loops; the
stop-gradients of BYOL / SimSiam / DINO; and for the losses that couple the batch (DINO's center,
VICReg, Barlow Twins) 2 gloo processes x B == 1 process x 2B for loss and gradients, while the
same 2-process computation without the gather / all-reduce differs."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist

from cvdist.losses.ssl import barlow_twins_loss, byol_loss, dino_loss, simsiam_loss, vicreg_loss
from tests.helpers.spawn import gloo_threads, run_ranks


def _rows(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def _cos(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))


P_A, P_B = [[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [3.0, 4.0]]
K_A, K_B = [[1.0, 1.0], [0.0, 1.0]], [[2.0, 0.0], [-1.0, 1.0]]


def test_byol_matches_a_hand_computed_value():
    expected = sum(2 - 2 * _cos(p, k) for p, k in zip(P_A, K_B)) / 2 + sum(2 - 2 * _cos(p, k) for p, k in zip(P_B, K_A)) / 2
    assert byol_loss(_rows(*P_A), _rows(*P_B), _rows(*K_A), _rows(*K_B)).item() == pytest.approx(expected, abs=1e-12)


def test_simsiam_matches_a_hand_computed_value():
    expected = -(sum(_cos(p, z) for p, z in zip(P_A, K_B)) / 2 + sum(_cos(p, z) for p, z in zip(P_B, K_A)) / 2) / 2
    assert simsiam_loss(_rows(*P_A), _rows(*P_B), _rows(*K_A), _rows(*K_B)).item() == pytest.approx(expected, abs=1e-12)


def _softmax(values, temperature):
    exps = [math.exp(v / temperature) for v in values]
    return [e / sum(exps) for e in exps]


def test_dino_matches_a_hand_computed_value_and_updates_the_center():
    student = [[[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0], [2.0, 0.0, 1.0]],
               [[0.3, -0.2, 0.1], [0.0, 0.0, 1.0]]]  # 2 global + 1 local crop, 2 images, 3 prototypes
    teacher = [[[0.2, 0.1, 0.0], [1.0, -1.0, 0.5]], [[0.0, 0.4, 0.2], [0.3, 0.3, 0.9]]]
    center, ts, tt, m = [0.1, -0.1, 0.05], 0.1, 0.04, 0.9
    total, pairs = 0.0, 0
    for t in range(2):
        for v in range(3):
            if v == t:
                continue
            for i in range(2):
                q = _softmax([x - c for x, c in zip(teacher[t][i], center)], tt)
                log_p = [math.log(p) for p in _softmax(student[v][i], ts)]
                total += -sum(a * b for a, b in zip(q, log_p)) / 2
            pairs += 1
    expected_center = [m * c + (1 - m) * sum(teacher[t][i][k] for t in range(2) for i in range(2)) / 4
                       for k, c in enumerate(center)]
    loss, new_center = dino_loss(torch.tensor(student, dtype=torch.float64), torch.tensor(teacher, dtype=torch.float64),
                                 center=torch.tensor(center, dtype=torch.float64), student_temperature=ts,
                                 teacher_temperature=tt, center_momentum=m)
    assert pairs == 4 and loss.item() == pytest.approx(total / pairs, abs=1e-12)
    assert new_center.tolist() == pytest.approx(expected_center, abs=1e-12)


def _mean(values):
    return sum(values) / len(values)


def test_vicreg_matches_a_hand_computed_value():
    z_a = [[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]]
    z_b = [[1.5, 2.0], [0.5, 0.0], [2.0, -2.0]]
    invariance = _mean([(a - b) ** 2 for ra, rb in zip(z_a, z_b) for a, b in zip(ra, rb)])
    variance = covariance = 0.0
    for z in (z_a, z_b):
        cols = list(zip(*z))
        means = [_mean(c) for c in cols]
        cov = [[sum((z[n][i] - means[i]) * (z[n][j] - means[j]) for n in range(3)) / 2 for j in range(2)] for i in range(2)]
        variance += _mean([max(0.0, 1 - math.sqrt(cov[d][d] + 1e-4)) for d in range(2)])
        covariance += (cov[0][1] ** 2 + cov[1][0] ** 2) / 2
    expected = 25 * invariance + 25 * variance + 1 * covariance
    assert vicreg_loss(_rows(*z_a), _rows(*z_b)).item() == pytest.approx(expected, abs=1e-12)
    assert variance > 0 and covariance > 0  # every term contributes on this example


def test_barlow_twins_matches_a_hand_computed_value():
    z_a = [[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]]
    z_b = [[1.5, 2.0], [0.5, 0.0], [2.0, -2.0]]

    def normalised(z):
        cols = list(zip(*z))
        means = [_mean(c) for c in cols]
        stds = [math.sqrt(_mean([(x - mu) ** 2 for x in c]) + 1e-5) for c, mu in zip(cols, means)]
        return [[(row[d] - means[d]) / stds[d] for d in range(2)] for row in z]

    na, nb = normalised(z_a), normalised(z_b)
    c = [[sum(na[n][i] * nb[n][j] for n in range(3)) / 3 for j in range(2)] for i in range(2)]
    expected = sum((1 - c[i][i]) ** 2 for i in range(2)) + 0.01 * (c[0][1] ** 2 + c[1][0] ** 2)
    got = barlow_twins_loss(_rows(*z_a), _rows(*z_b), off_diagonal_weight=0.01)
    assert got.item() == pytest.approx(expected, abs=1e-12)


def test_no_gradient_reaches_the_target_branch():
    generator = torch.Generator().manual_seed(0)
    p_a, p_b, k_a, k_b = (torch.randn(4, 3, generator=generator, requires_grad=True) for _ in range(4))
    for loss in (byol_loss(p_a, p_b, k_a, k_b), simsiam_loss(p_a, p_b, k_a, k_b)):
        loss.backward()
        assert p_a.grad.abs().sum() > 0 and p_b.grad.abs().sum() > 0
        assert k_a.grad is None and k_b.grad is None
        p_a.grad = p_b.grad = None
    student = torch.randn(4, 4, 3, generator=generator, requires_grad=True)
    teacher = torch.randn(2, 4, 3, generator=generator, requires_grad=True)
    loss, center = dino_loss(student, teacher, center=torch.zeros(3))
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None and not center.requires_grad


def _data(rows=8, dim=4):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, rows, dim, generator=generator, dtype=torch.float64)  # 2 global + 2 local views
    weight = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return x, weight


def _coupled_losses(x, weight, *, world_size):
    """Each coupled loss on embeddings ``x @ weight``. DINO runs two steps so that the second
    loss depends on the center the first one all-reduced; the teacher is a fixed other map."""
    z = x @ weight
    out = {"vicreg": vicreg_loss(z[0], z[1], world_size=world_size),
           "barlow": barlow_twins_loss(z[0], z[1], off_diagonal_weight=0.05, world_size=world_size)}
    teacher, center = (x[:2] @ weight.T).detach(), torch.zeros(x.shape[-1], dtype=x.dtype)
    first, center = dino_loss(z, teacher, center=center, teacher_temperature=0.5, center_momentum=0.5,
                              world_size=world_size)
    second, center = dino_loss(z, teacher * 2, center=center, teacher_temperature=0.5, center_momentum=0.5,
                               world_size=world_size)
    out["dino"] = first + second
    return out, center


def _worker(rank: int, world_size: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        x, weight = _data()
        rows = x.shape[1] // world_size
        mine = x[:, rank * rows:(rank + 1) * rows]
        results = {}
        for reduced in (world_size, 1):  # 1: each rank alone, the gather / all-reduce removed
            for name in ("vicreg", "barlow", "dino"):
                w = weight.clone().requires_grad_(True)
                losses, center = _coupled_losses(mine, w, world_size=reduced)
                losses[name].backward()
                loss, grad = losses[name].detach().clone(), w.grad.clone()
                dist.all_reduce(loss)
                dist.all_reduce(grad)  # DDP averages the ranks' gradients
                results[name, reduced] = [(t / world_size).tolist() for t in (loss, grad)] + [center.tolist()]
    finally:
        dist.destroy_process_group()
    results["gloo threads"] = gloo_threads()  # a group kept alive by a reference aborts the exit now and then
    queue.put((rank, results))


def test_coupled_losses_two_processes_equal_one_process_and_differ_without_the_reduction():
    gathered = run_ranks(_worker, world_size=2)
    assert [gathered[rank]["gloo threads"] for rank in range(2)] == [[], []]
    x, weight = _data()
    for name in ("vicreg", "barlow", "dino"):
        w = weight.clone().requires_grad_(True)
        losses, center = _coupled_losses(x, w, world_size=1)
        losses[name].backward()
        for rank in range(2):
            loss, grad, rank_center = (torch.tensor(v, dtype=torch.float64) for v in gathered[rank][name, 2])
            assert loss.item() == pytest.approx(losses[name].item(), abs=1e-6), name
            torch.testing.assert_close(grad, w.grad, atol=1e-6, rtol=0, msg=name)
            torch.testing.assert_close(rank_center, center, atol=1e-6, rtol=0, msg=name)
            alone, alone_grad, alone_center = (torch.tensor(v, dtype=torch.float64) for v in gathered[rank][name, 1])
            # per-rank statistics: the bug the gather / all-reduce prevents shows in loss and gradient
            assert abs(alone.item() - losses[name].item()) > 1e-4, name
            assert (alone_grad - w.grad).abs().max() > 1e-4, name
            if name == "dino":
                assert (alone_center - center).abs().max() > 1e-4
