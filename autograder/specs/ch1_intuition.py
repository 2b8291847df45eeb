"""Trusted verdicts for ch1_intuition: hard lookup, soft lookup, softmax with a temperature.

Written answers (ch1-by-hand, ch1-limits, ch1-why-soft) are graded by hand and are not listed here.
"""

GRADED = {
    "ch1-hard-lookup-test": {"points": 1.0, "checks": [["hard_lookup", "hard_lookup"]]},
    "ch1-soft-lookup-test": {"points": 2.0, "checks": [["soft_lookup", "soft_lookup"]]},
    "ch1-temperature-test": {"points": 2.0, "checks": [["softmax_temperature", "softmax_temperature"]]},
}
