"""Classic mistakes in chapter 1's lookups and the softmax with a temperature.

    hard lookup:  values[argmax(keys @ query)]            (a dictionary lookup by best match)
    soft lookup:  softmax(keys @ query) @ values          (a weighted average of all values)
    temperature:  softmax(x / temperature, dim=-1)
"""

from __future__ import annotations

import math

import torch

from ..base import Mutant

# --- hard_lookup(query [d], keys [n, d], values [n, dv]) ----------------------------------------------


def hard_returns_key(query, keys, values):
    return keys[torch.argmax(keys @ query)]  # (d,)


def hard_argmin(query, keys, values):
    return values[torch.argmin(keys @ query)]  # (dv,)


def hard_returns_index(query, keys, values):
    return torch.argmax(keys @ query)  # () the index, not the value


def hard_is_soft(query, keys, values):
    return torch.softmax(keys @ query, dim=-1) @ values  # (dv,)


HARD_LOOKUP = (
    Mutant("returned_key", "You returned the best-matching key, not its value.",
           "index values with the argmax: values[argmax].", hard_returns_key),
    Mutant("argmin_instead_of_argmax", "You returned the value of the worst match (argmin).",
           "the best match has the largest dot product: argmax.", hard_argmin),
    Mutant("returned_index", "You returned the index of the best match, not its value.",
           "finish with values[index].", hard_returns_index),
    Mutant("soft_instead_of_hard", "You returned a softmax-weighted average: that is the soft lookup.",
           "the hard lookup returns exactly one value row: values[argmax(keys @ query)].", hard_is_soft),
)  # fmt: skip


# --- soft_lookup(query [d], keys [n, d], values [n, dv]) ----------------------------------------------


def soft_no_softmax(query, keys, values):
    return (keys @ query) @ values  # raw scores as weights


def soft_scaled(query, keys, values):
    return torch.softmax(keys @ query / math.sqrt(query.shape[-1]), dim=-1) @ values


def soft_not_normalised(query, keys, values):
    return torch.exp(keys @ query) @ values  # exp without dividing by the sum


def soft_not_normalised_shifted(query, keys, values):
    s = keys @ query  # (n,)
    return torch.exp(s - s.max()) @ values  # the max trick done, the division by the sum forgotten


def soft_no_max_subtraction(query, keys, values):
    e = torch.exp(keys @ query)  # overflows to inf for large scores, and inf / inf = NaN
    return (e / e.sum()) @ values


def soft_uniform(query, keys, values):
    return values.mean(dim=0)  # every value weighted 1/n: the query was never used


def soft_is_hard(query, keys, values):
    return values[torch.argmax(keys @ query)]


def soft_returns_weights(query, keys, values):
    return torch.softmax(keys @ query, dim=-1)  # (n,)


SOFT_LOOKUP = (
    Mutant("softmax_missing", "You weighted the values by the raw scores: the softmax is missing.",
           "weights = torch.softmax(keys @ query, dim=-1), then weights @ values.", soft_no_softmax),
    Mutant("weights_not_normalised", "Your weights do not sum to 1: you took exp() but did not divide by the sum.",
           "use torch.softmax, or divide exp(scores) by its sum.", soft_not_normalised),
    Mutant("weights_not_normalised_after_max", "Your weights do not sum to 1: you subtracted the max and took exp(), "
           "but did not divide by the sum.", "divide exp(scores - max) by its sum.", soft_not_normalised_shifted),
    Mutant("overflow_no_max_subtraction", "Your output is NaN when the scores are large: exp() overflowed to inf "
           "and inf/inf is NaN.", "subtract the largest score before exp() (softmax is unchanged by a shift).",
           soft_no_max_subtraction),
    Mutant("scaled_scores", "You divided the scores by sqrt(d): this chapter's soft lookup uses raw dot products "
           "(the scaling comes in chapter 3).", "weights = softmax(keys @ query).", soft_scaled),
    Mutant("uniform_weights", "Your answer is the plain mean of the values: the query never influenced it.",
           "weight each value by softmax(keys @ query).", soft_uniform),
    Mutant("hard_instead_of_soft", "You returned the single best value: that is the hard lookup.",
           "average all values, weighted by softmax(keys @ query).", soft_is_hard),
    Mutant("returned_weights", "You returned the weights [n], not the weighted average of the values [dv].",
           "finish with weights @ values.", soft_returns_weights),
)  # fmt: skip


# --- softmax_temperature(x [..., n], temperature) -----------------------------------------------------


def temperature_multiplied(x, temperature):
    return torch.softmax(x * temperature, dim=-1)


def temperature_ignored(x, temperature):
    return torch.softmax(x, dim=-1)


def temperature_wrong_axis(x, temperature):
    return torch.softmax(x / temperature, dim=0)


def temperature_no_max_subtraction(x, temperature):
    e = torch.exp(x / temperature)  # overflows to inf for large logits, and inf / inf = NaN
    return e / e.sum(dim=-1, keepdim=True)


SOFTMAX_TEMPERATURE = (
    Mutant("multiplied_by_temperature", "You multiplied by the temperature instead of dividing: a high temperature "
           "should flatten the distribution, yours sharpens it.", "softmax(x / temperature).", temperature_multiplied),
    Mutant("temperature_ignored", "Your output does not depend on the temperature.",
           "divide the logits by the temperature before the softmax.", temperature_ignored),
    Mutant("softmax_wrong_axis", "Your softmax normalised over the first dim instead of the last.",
           "softmax over the last dim: dim=-1.", temperature_wrong_axis),
    Mutant("overflow_no_max_subtraction", "Your output is NaN for large logits: exp() overflowed to inf and inf/inf "
           "is NaN.", "subtract the row max before exp() (softmax is unchanged by a shift), or use torch.softmax.",
           temperature_no_max_subtraction),
)  # fmt: skip
