#!/usr/bin/env python3
"""Reference values for tests/privacy_tests.cc: Opacus's opacus/accountants/analysis/rdp.py
(compute_rdp, get_privacy_spent) and utils.get_noise_multiplier re-typed with mpmath at 50 digits
instead of numpy/scipy (not installed here), so that the C++ accountant is checked against an
independent computation. Run: python3 tests/privacy_reference.py"""
import mpmath as mp

mp.mp.dps = 50
DEFAULT_ALPHAS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
TF_ORDERS = [1.25, 1.5, 1.75, 2., 2.25, 2.5, 3., 3.5, 4., 4.5] + list(range(5, 64)) + [128, 256, 512]


def log_a_int(q, sigma, alpha):
    total = mp.mpf(0)
    for i in range(alpha + 1):
        total += mp.binomial(alpha, i) * q**i * (1 - q)**(alpha - i) * mp.e**((i * i - i) / (2 * sigma**2))
    return mp.log(total)


def log_a_frac(q, sigma, alpha):
    # the same two series as Opacus, summed directly (50 digits need no log-space tricks)
    a0 = a1 = mp.mpf(0)
    z0 = sigma**2 * mp.log(1 / q - 1) + mp.mpf(1) / 2
    i = 0
    while True:
        coef = mp.binomial(alpha, i)
        j = alpha - i
        s0 = coef * q**i * (1 - q)**j * mp.e**((i * i - i) / (2 * sigma**2)) * mp.erfc((i - z0) / (mp.sqrt(2) * sigma)) / 2
        s1 = coef * q**j * (1 - q)**i * mp.e**((j * j - j) / (2 * sigma**2)) * mp.erfc((z0 - j) / (mp.sqrt(2) * sigma)) / 2
        a0 += s0
        a1 += s1
        i += 1
        if max(mp.log(abs(s0)), mp.log(abs(s1))) < -30:
            break
    return mp.log(a0 + a1)


def rdp(q, sigma, steps, orders):
    q, sigma = mp.mpf(q), mp.mpf(sigma)
    out = []
    for a in orders:
        la = log_a_int(q, sigma, int(a)) if float(a).is_integer() else log_a_frac(q, sigma, mp.mpf(a))
        out.append(la / (a - 1) * steps)
    return out


def eps(orders, r, delta, improved=True):
    best = None
    for a, x in zip(orders, r):
        a = mp.mpf(a)
        e = x - (mp.log(delta) + mp.log(a)) / (a - 1) + mp.log((a - 1) / a) if improved else x - mp.log(delta) / (a - 1)
        if best is None or e < best[0]:
            best = (e, a)
    return best


def noise_for_epsilon(target, delta, q, steps, tol=0.01):
    low, high, eps_high = 0, 10, float("inf")
    while eps_high > target:
        high *= 2
        eps_high = eps(DEFAULT_ALPHAS, rdp(q, high, steps, DEFAULT_ALPHAS), delta)[0]
    while target - eps_high > tol:
        mid = (low + high) / 2
        e = eps(DEFAULT_ALPHAS, rdp(q, mid, steps, DEFAULT_ALPHAS), delta)[0]
        if e < target:
            high, eps_high = mid, e
        else:
            low = mid
    return high


if __name__ == "__main__":
    mnist_q, mnist_steps = 256 / 60000, 14063  # ceil(60 * 60000 / 256)
    print("opacus test (q 0.04, sigma 1.5, 2250 steps):", eps(DEFAULT_ALPHAS, rdp(0.04, 1.5, 2250, DEFAULT_ALPHAS), 1e-5))
    print("tf-privacy mnist, classic, TF orders:", eps(TF_ORDERS, rdp(mnist_q, 1.1, mnist_steps, TF_ORDERS), 1e-5, False))
    print("tf-privacy mnist, improved, default alphas:", eps(DEFAULT_ALPHAS, rdp(mnist_q, 1.1, mnist_steps, DEFAULT_ALPHAS), 1e-5))
    for a in (1.5, 2.5, 7.3, 3, 40):
        print(f"rdp one step q 0.01 sigma 0.8 alpha {a}:", rdp(0.01, 0.8, 1, [a])[0])
    print("sigma for eps 8, q 0.04, 2250 steps:", noise_for_epsilon(8, 1e-5, 0.04, 2250))
