from moeforge.train.schedule import lr_at


def test_lr_warms_up_then_decays_to_a_tenth():
    peak, steps, warmup = 1e-3, 100, 10
    lrs = [lr_at(s, steps, peak, warmup) for s in range(steps + 1)]
    assert lrs[0] < lrs[5] < lrs[9] == peak
    assert all(a >= b for a, b in zip(lrs[warmup:], lrs[warmup + 1 :]))
    assert abs(lrs[-1] - peak / 10) < 1e-12
