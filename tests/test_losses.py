"""Preference losses against values computed by hand from the formulas (plain `math`, not the implementation)."""

import math

import pytest
import torch

from preftune.model.reward_model import reward_model_loss
from preftune.pipeline.params import load_params
from preftune.pipeline.schema import LOSS_NAMES
from preftune.train import losses as L
from preftune.train.losses import PairLogps

# REFERENCES.md worked values.
PC = [-1.5, -2.0, -1.8, -2.2]
PR = [-2.5, -2.8, -2.0, -3.0]
RC = [-1.8, -2.1, -1.9, -2.3]
RR = [-2.3, -2.5, -2.1, -2.8]
BETA = 0.1
OPTIONS = {"label_smoothing": 0.1, "simpo_gamma": 0.5, "orpo_lambda": 0.1, "kto_desirable_weight": 1.0,
           "kto_undesirable_weight": 1.0}  # what PreferenceLoss reads from the dpo section beside loss and beta


def loss_fn(**dpo) -> L.PreferenceLoss:
    """PreferenceLoss from a dpo section: sigmoid at BETA with OPTIONS, but for the keys given."""
    return L.PreferenceLoss.from_params({"loss": "sigmoid", "loss_weights": None, "beta": BETA, **OPTIONS, **dpo})


def t(xs, grad=False):
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def hs(pc=PC, pr=PR, rc=RC, rr=RR):
    return [(a - c) - (b - d) for a, b, c, d in zip(pc, pr, rc, rr)]


def mean(xs):
    return sum(xs) / len(xs)


def worked():
    return t(PC), t(PR), t(RC), t(RR)


# --- each loss against the formula ---------------------------------------------------------------------------

def test_sigmoid_worked_values():
    assert L.sigmoid_loss(*worked(), BETA).mean().item() == pytest.approx(0.67830, abs=5e-6)
    pc, pr, ref = t([-1.0, -1.5]), t([-3.0, -3.5]), t([-2.0, -2.0])
    assert L.sigmoid_loss(pc, pr, ref, ref, BETA).mean().item() == pytest.approx(0.59814, abs=5e-6)
    assert L.sigmoid_loss(pr, pc, ref, ref, BETA).mean().item() == pytest.approx(0.79814, abs=5e-6)


def test_sigmoid_per_example_shape_and_values():
    out = L.sigmoid_loss(*worked(), BETA)
    assert out.shape == (4,)
    expected = [-logsig(BETA * h) for h in hs()]
    assert out.tolist() == pytest.approx(expected, abs=1e-12)


def test_cdpo():
    e = 0.1
    expected = mean([-(1 - e) * logsig(BETA * h) - e * logsig(-BETA * h) for h in hs()])
    assert L.cdpo_loss(*worked(), BETA, e).mean().item() == pytest.approx(expected, abs=1e-12)


def test_robust():
    e = 0.2
    expected = mean([(-(1 - e) * logsig(BETA * h) + e * logsig(-BETA * h)) / (1 - 2 * e) for h in hs()])
    assert L.robust_loss(*worked(), BETA, e).mean().item() == pytest.approx(expected, abs=1e-12)


def test_robust_and_cdpo_with_zero_smoothing_equal_sigmoid():
    dpo = L.sigmoid_loss(*worked(), BETA)
    assert torch.equal(L.robust_loss(*worked(), BETA, 0.0), dpo)
    assert torch.allclose(L.cdpo_loss(*worked(), BETA, 0.0), dpo, atol=0, rtol=1e-15)


def test_robust_asserts_below_half():
    """schema.py refuses dpo.label_smoothing >= 0.5 (test_params); the loss itself asserts, as it divides by 1 - 2e."""
    with pytest.raises(AssertionError):
        L.robust_loss(*worked(), BETA, 0.5)


def test_hinge():
    # beta 10 so that some pairs are past the hinge (beta h >= 1) and give 0
    beta = 10.0
    expected = [max(0.0, 1 - beta * h) for h in hs()]
    assert L.hinge_loss(*worked(), beta).tolist() == pytest.approx(expected, abs=1e-12)
    assert 0.0 in L.hinge_loss(*worked(), beta).tolist()


def test_ipo():
    expected = [(h - 1 / (2 * BETA)) ** 2 for h in hs()]
    assert L.ipo_loss(*worked(), BETA).tolist() == pytest.approx(expected, abs=1e-12)
    # hand value of the first pair: h = 0.3 - (-0.2) = 0.5 -> (0.5 - 5)^2 = 20.25
    assert L.ipo_loss(*worked(), BETA)[0].item() == pytest.approx(20.25, abs=1e-12)


def test_simpo():
    gamma = 0.5
    beta = 2.0
    expected = [-logsig(beta * (w - l) - gamma) for w, l in zip(PC, PR)]
    assert L.simpo_loss(t(PC), t(PR), beta, gamma).tolist() == pytest.approx(expected, abs=1e-12)


def test_orpo():
    lam = 0.1

    def log_odds(lp):
        return lp - math.log(1 - math.exp(lp))

    expected = [-w - lam * logsig(log_odds(w) - log_odds(l)) for w, l in zip(PC, PR)]
    assert L.orpo_loss(t(PC), t(PR), lam).tolist() == pytest.approx(expected, abs=1e-12)


def test_orpo_is_finite_at_logp_zero_and_near_zero():
    for dtype in (torch.float32, torch.float64):
        w = torch.tensor([0.0, -1e-12, -1e-3, -50.0], dtype=dtype, requires_grad=True)
        lo = torch.tensor([-1.0, 0.0, -2.0, -60.0], dtype=dtype, requires_grad=True)
        out = L.orpo_loss(w, lo, 0.1)
        assert torch.isfinite(out).all()
        out.sum().backward()
        assert torch.isfinite(w.grad).all() and torch.isfinite(lo.grad).all()


def test_kto():
    z = 0.05
    wd, wu = 1.5, 0.7
    expected = []
    for a, b, c, d in zip(PC, PR, RC, RR):
        r_w, r_l = a - c, b - d
        expected.append((wd * (1 - sig(BETA * (r_w - z))) + wu * (1 - sig(BETA * (z - r_l)))) / 2)
    out = L.kto_loss(*worked(), torch.tensor(z, dtype=torch.float64), BETA, wd, wu)
    assert out.tolist() == pytest.approx(expected, abs=1e-12)


def test_kto_clamps_negative_kl_estimate_and_detaches_it():
    z = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    neg = L.kto_loss(*worked(), z, BETA)
    zero = L.kto_loss(*worked(), torch.tensor(0.0), BETA)
    assert torch.allclose(neg, zero)
    z2 = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    pc = t(PC, grad=True)
    L.kto_loss(pc, t(PR), t(RC), t(RR), z2, BETA).sum().backward()
    assert pc.grad is not None and z2.grad is None


# --- gradients ---------------------------------------------------------------------------------------------

def _grad_case(name):
    """Loss of `name` at a generic point, as a function of the policy log-probs (leaf tensors)."""
    pc, pr = t([-1.2, -2.3, -0.7], grad=True), t([-1.9, -2.1, -1.4], grad=True)
    rc, rr = t([-1.0, -2.5, -0.9]), t([-1.6, -2.4, -1.1])
    fns = {
        "sigmoid": lambda: L.sigmoid_loss(pc, pr, rc, rr, BETA),
        "cdpo": lambda: L.cdpo_loss(pc, pr, rc, rr, BETA, 0.1),
        "robust": lambda: L.robust_loss(pc, pr, rc, rr, BETA, 0.1),
        "hinge": lambda: L.hinge_loss(pc, pr, rc, rr, BETA),
        "ipo": lambda: L.ipo_loss(pc, pr, rc, rr, BETA),
        "simpo": lambda: L.simpo_loss(pc, pr, BETA, 0.5),   # averaged log-probs
        "orpo": lambda: L.orpo_loss(pc, pr, 0.1),           # averaged log-probs
        "kto": lambda: L.kto_loss(pc, pr, rc, rr, torch.tensor(0.1), BETA),
    }
    return fns[name], pc, pr


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradient_direction(name):
    fn, pc, pr = _grad_case(name)
    fn().mean().backward()
    assert (pc.grad < 0).all(), pc.grad
    assert (pr.grad > 0).all(), pr.grad


def test_beta_zero_gives_log2_and_zero_gradient():
    pc, pr = t(PC, grad=True), t(PR, grad=True)
    out = L.sigmoid_loss(pc, pr, t(RC), t(RR), 0.0)
    assert out.tolist() == [math.log(2)] * 4
    out.mean().backward()
    assert torch.equal(pc.grad, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(pr.grad, torch.zeros(4, dtype=torch.float64))


def test_policy_as_its_own_reference_gives_constant_log2():
    pc, pr = t(PC), t(PR)
    assert L.sigmoid_loss(pc, pr, pc, pr, 5.0).tolist() == [math.log(2)] * 4


# --- reward model -------------------------------------------------------------------------------------------

def test_reward_model_loss():
    rw, rl = [1.0, -0.5, 2.0], [0.2, 0.5, 2.5]
    expected = [-logsig(a - b) for a, b in zip(rw, rl)]
    assert reward_model_loss(t(rw), t(rl)).tolist() == pytest.approx(expected, abs=1e-12)
    # hand value: -logsig(0.8) = log(1 + e^-0.8) = 0.371100...
    assert reward_model_loss(t(rw), t(rl))[0].item() == pytest.approx(0.3711007, abs=1e-6)
    c = 0.01
    expected_c = [-logsig(a - b) + c * (a + b) ** 2 for a, b in zip(rw, rl)]
    assert reward_model_loss(t(rw), t(rl), c).tolist() == pytest.approx(expected_c, abs=1e-12)
    # third pair: -logsig(-0.5) + 0.01 * 4.5^2 = 0.974077 + 0.2025
    assert reward_model_loss(t(rw), t(rl), c)[2].item() == pytest.approx(0.9740770 + 0.2025, abs=1e-6)


# --- dispatcher ---------------------------------------------------------------------------------------------

TOK_W, TOK_L = [2.0, 4.0, 3.0, 1.0], [5.0, 2.0, 4.0, 2.0]


def pair_logps(ref=True, kl=None):
    return PairLogps(t(PC), t(PR), t(RC) if ref else None, t(RR) if ref else None, t(TOK_W), t(TOK_L),
                     None if kl is None else torch.tensor(kl))


def test_dispatcher_knows_exactly_the_schema_names():
    """params.yaml's dpo.loss choices (schema.LOSS_NAMES) are the names PreferenceLoss dispatches on."""
    for name in LOSS_NAMES:
        logps = pair_logps(kl=0.05)
        assert loss_fn(loss=name)(logps)[0].shape == (4,)
    with pytest.raises(ValueError, match="dpo_typo"):
        loss_fn().term("dpo_typo", pair_logps())


def test_dispatcher_reads_its_options_from_the_dpo_section():
    dpo = load_params()["dpo"]
    assert set(OPTIONS) <= set(dpo)
    assert torch.equal(L.PreferenceLoss.from_params(dpo).term("cdpo", pair_logps()),
                       L.cdpo_loss(*worked(), dpo["beta"], dpo["label_smoothing"]))


def test_dispatcher_summed_losses_match_direct_calls():
    p = pair_logps()
    assert torch.equal(loss_fn().term("sigmoid", p), L.sigmoid_loss(*worked(), BETA))
    assert torch.equal(loss_fn().term("cdpo", p), L.cdpo_loss(*worked(), BETA, 0.1))
    assert torch.equal(loss_fn(label_smoothing=0.2).term("robust", p), L.robust_loss(*worked(), BETA, 0.2))
    assert torch.equal(loss_fn().term("hinge", p), L.hinge_loss(*worked(), BETA))
    assert torch.equal(loss_fn(beta=0.3).term("sigmoid", p), L.sigmoid_loss(*worked(), 0.3))


def test_dispatcher_ipo_averages_policy_and_reference():
    avg = [[x / n for x, n in zip(xs, toks)] for xs, toks in ((PC, TOK_W), (PR, TOK_L), (RC, TOK_W), (RR, TOK_L))]
    expected = [(((a - c) - (b - d)) - 1 / (2 * BETA)) ** 2 for a, b, c, d in zip(*avg)]
    assert loss_fn().term("ipo", pair_logps()).tolist() == pytest.approx(expected, abs=1e-12)


def test_dispatcher_reference_free_losses_use_averages():
    aw = [x / n for x, n in zip(PC, TOK_W)]
    al = [x / n for x, n in zip(PR, TOK_L)]
    gamma, lam = 0.3, 0.25
    expected_simpo = [-logsig(BETA * (w - l) - gamma) for w, l in zip(aw, al)]
    got = loss_fn(simpo_gamma=gamma).term("simpo", pair_logps(ref=False))
    assert got.tolist() == pytest.approx(expected_simpo, abs=1e-12)

    def log_odds(lp):
        return lp - math.log(1 - math.exp(lp))

    expected_orpo = [-w - lam * logsig(log_odds(w) - log_odds(l)) for w, l in zip(aw, al)]
    got = loss_fn(orpo_lambda=lam).term("orpo", pair_logps(ref=False))
    assert got.tolist() == pytest.approx(expected_orpo, abs=1e-12)
    assert L.REFERENCE_FREE == {"simpo", "orpo", "sft"}  # sft: the mixture term (RPO)


def test_dispatcher_kto_needs_kl_estimate_and_reference():
    assert L.NEEDS_KL_ESTIMATE == {"kto"}
    assert loss_fn(loss=["sigmoid", "kto"]).needs_kl_estimate and not loss_fn(loss=["sigmoid", "sft"]).needs_kl_estimate
    with pytest.raises(AssertionError, match="kl_estimate"):
        loss_fn().term("kto", pair_logps())
    with pytest.raises(AssertionError, match="reference"):
        loss_fn().term("sigmoid", pair_logps(ref=False))
    got = loss_fn(kto_desirable_weight=1.5, kto_undesirable_weight=0.7).term("kto", pair_logps(kl=0.05))
    assert torch.allclose(got, L.kto_loss(*worked(), torch.tensor(0.05), BETA, 1.5, 0.7))


# --- diagnostics --------------------------------------------------------------------------------------------

def test_pair_diagnostics_with_reference():
    d = L.pair_diagnostics(pair_logps(), BETA)
    assert d["kl_chosen"] == pytest.approx(mean([a - c for a, c in zip(PC, RC)]))  # 0.15
    assert d["kl_chosen"] == pytest.approx(0.15)
    assert d["kl_rejected"] == pytest.approx(mean([b - e for b, e in zip(PR, RR)]))  # -0.15
    assert d["kl_rejected"] == pytest.approx(-0.15)
    assert d["implicit_r_w"] == pytest.approx(0.015)
    assert d["implicit_r_l"] == pytest.approx(-0.015)
    assert d["margin"] == pytest.approx(BETA * mean(hs()))  # h = 0.5, 0.4, 0.0 (+- rounding), 0.3
    assert d["margin"] == pytest.approx(0.03)
    assert d["pair_accuracy"] == mean([1.0 if BETA * h > 0 else 0.0 for h in hs()])


def test_pair_diagnostics_accuracy_is_strict_and_reference_free_omits_kl():
    pc = t([-1.0, -2.0])
    p = PairLogps(pc, pc.clone(), pc.clone(), pc.clone(), t([1.0, 1.0]), t([1.0, 1.0]))
    assert L.pair_diagnostics(p, BETA)["pair_accuracy"] == 0.0       # h == 0 is no win
    assert L.pair_diagnostics(pair_logps(), 0.0)["pair_accuracy"] == 0.0
    d = L.pair_diagnostics(pair_logps(ref=False), BETA)
    assert "kl_chosen" not in d and "kl_rejected" not in d
    aw = [x / n for x, n in zip(PC, TOK_W)]
    al = [x / n for x, n in zip(PR, TOK_L)]
    assert d["pair_accuracy"] == mean([1.0 if w > l else 0.0 for w, l in zip(aw, al)])
    assert d["margin"] == pytest.approx(BETA * mean([w - l for w, l in zip(aw, al)]))


def test_kto_on_unpaired_rows_is_the_pair_form_split_by_label():
    """Each pair is one desirable and one undesirable example: the unpaired loss on those two examples, averaged,
    is the pair loss; the weights scale only their own kind."""
    pc, pr, rc, rr = worked()
    z = torch.tensor(0.05, dtype=torch.float64)
    policy, ref = torch.cat([pc, pr]), torch.cat([rc, rr])
    labels = torch.tensor([True] * len(pc) + [False] * len(pr))
    unpaired = L.kto_unpaired_loss(policy, ref, labels, z, BETA, 1.5, 0.5)
    torch.testing.assert_close((unpaired[:len(pc)] + unpaired[len(pc):]) / 2, L.kto_loss(pc, pr, rc, rr, z, BETA, 1.5, 0.5))
    plain = L.kto_unpaired_loss(policy, ref, labels, z, BETA)
    assert torch.equal(loss_fn(kto_desirable_weight=1.5, kto_undesirable_weight=0.5).unpaired(policy, ref, labels, z),
                       unpaired)
    torch.testing.assert_close(unpaired, torch.where(labels, 1.5 * plain, 0.5 * plain))


# --- mixtures (dpo.loss as a list) ----------------------------------------------------------------------------

def test_a_single_loss_is_unchanged_and_a_mixture_is_the_weighted_sum():
    p = pair_logps()
    single, terms = loss_fn(loss="sigmoid")(p)
    assert torch.equal(single, L.sigmoid_loss(*worked(), BETA)) and list(terms) == ["sigmoid"]
    rpo, terms = loss_fn(loss=["sigmoid", "sft"], loss_weights=[1.0, 0.5])(p)
    nll = -t(PC) / t(TOK_W)  # the chosen answer's NLL per token
    assert torch.allclose(terms["sft"], nll)
    assert torch.allclose(rpo, L.sigmoid_loss(*worked(), BETA) + 0.5 * nll)
    equal, _ = loss_fn(loss=["sigmoid", "sft"])(p)
    assert torch.allclose(equal, L.sigmoid_loss(*worked(), BETA) + nll)


def test_the_sft_term_raises_the_chosen_likelihood_only():
    pc, pr = t(PC, grad=True), t(PR, grad=True)
    logps = PairLogps(pc, pr, t(RC), t(RR), t(TOK_W), t(TOK_L))
    loss_fn().term("sft", logps).sum().backward()
    assert (pc.grad < 0).all() and pr.grad is None or not pr.grad.any()
