"""SYNTHETIC demo data: a four-tier catalog and a generated routing log. Nothing here is real model output.

The demo lets every part of tierwise run offline and in seconds (quickstart, tests, notebooks). The log is
generated from a documented model, so a router trained on it can only learn what the generator put in.

Catalog (:func:`demo_catalog`, also shipped as ``models/catalog.yaml``): tiers ``nano`` / ``small`` / ``medium`` /
``large`` served by the fictional models ``demo-nano`` ... ``demo-large`` (provider ``synthetic``), priced like
real API tiers (USD per 1M input / output tokens: 0.10/0.40, 0.50/1.50, 3/15, 15/75).

Log (:func:`demo_log`), canonical long format (see :mod:`training.readers`), one row per attempt:

* ``n_prompts`` prompts of 8 task kinds (:data:`TASKS`), each with a true difficulty ``d`` in 1..5 drawn with
  probabilities :data:`DIFFICULTY_PROBS`.
* Prompt text is built from templates and word pools. The text shows the task (template wording) and an
  *apparent* difficulty ``d_text = clip(d + j, 1, 5)`` with ``j`` in {-1, 0, +1} (probabilities
  :data:`APPARENT_JITTER_PROBS`): harder-looking prompts are longer, carry more constraints, multi-step markers,
  code blocks, more and larger numbers, more premises.
* Every prompt is attempted on every tier. An attempt on tier ``t`` is acceptable with probability::

      P(acceptable | t, prompt) = sigmoid(A * (SKILL[t] + AFFINITY[t, task] - d - h))

  with ``A`` = :data:`SHARPNESS`, ``SKILL`` = :data:`SKILL`, ``AFFINITY`` = :data:`AFFINITY` and a per-prompt
  hidden noise ``h ~ Normal(0, HIDDEN_NOISE_SD)`` that the text does not show (shared by all tiers of the prompt).
* ``score``: pass/fail tasks give 1.0 / 0.0; graded tasks (:data:`GRADED_TASKS`: chat, summarize) give a judge-like
  score rounded to 0.01, in [0.70, 1.00] when acceptable and in [0.00, 0.69] otherwise (the demo catalog uses
  threshold 0.7 for them, 1.0 elsewhere).
* ``input_tokens`` = round(len(prompt) / CHARS_PER_TOKEN[t] * (1 + N(0, 0.03))), a per-model tokenizer ratio;
  ``output_tokens`` = OUTPUT_BASE[task] * (0.6 + 0.2 d) * VERBOSITY[t] * LogNormal(0, 0.25);
  ``cost_usd`` = catalog list price x tokens; ``latency_ms`` = LATENCY_BASE_MS[t] + output_tokens x
  MS_PER_OUTPUT_TOKEN[t] x LogNormal(0, 0.2); ``timestamp`` spread over 28 days from 2025-01-06 UTC.
* ``role``: ``single`` except for the ``planning`` task, whose prompts are plan / execute / verify steps
  (probabilities :data:`PLANNING_ROLE_PROBS`).
* About :data:`REPEAT_FRACTION` of (prompt, tier) pairs get a second, independently drawn attempt.
* Extra columns: ``difficulty`` (the true ``d``; hidden from routers, for analysis only) and ``synthetic`` = True.
* No ``split`` column: the pipeline splits by itself.

Resulting cheapest-acceptable-tier distribution (n_prompts=3000, seed=0): nano 34%, small 24%, medium 22%,
large 14%, none 6% (other seeds within about 2 points); a TF-IDF + logistic regression text classifier reaches
about 50% accuracy on it against 33% for the majority class. The generator uses only
``numpy.random.Generator(PCG64(seed))``, so the output is the same on every run and machine (for a given numpy
version).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd

from router.atomic_io import atomic_path, write_text_atomic
from router.catalog import DEFAULT_CATALOG_PATH, Acceptability, Catalog, Planning, Tier

__all__ = [
    "TASKS",
    "demo_catalog",
    "demo_catalog_yaml",
    "demo_log",
    "write_demo_catalog",
    "write_demo_log",
]

# ---- generator constants (SYNTHETIC) -------------------------------------------------------------------------
TIERS = ("nano", "small", "medium", "large")
TASKS = ("chat", "summarize", "extract", "classify", "code", "math", "reasoning", "planning")
GRADED_TASKS = ("chat", "summarize")
TASK_PROBS = (0.16, 0.14, 0.12, 0.12, 0.13, 0.12, 0.11, 0.10)
DIFFICULTY_PROBS = (0.26, 0.24, 0.21, 0.17, 0.12)
APPARENT_JITTER_PROBS = (0.15, 0.70, 0.15)  # j = -1, 0, +1
SHARPNESS = 2.5
SKILL = (1.95, 2.9, 4.0, 5.0)
HIDDEN_NOISE_SD = 0.45
# AFFINITY[t][task]: per-tier strengths and weaknesses by task (rows: TIERS, columns: TASKS).
AFFINITY = (
    (0.40, 0.20, 0.20, 0.50, -0.50, -0.60, -0.40, -0.70),  # nano: ok at chat/classify, weak at code/math/planning
    (0.30, 0.30, 0.20, 0.30, -0.20, -0.30, -0.30, -0.40),  # small
    (0.00, 0.10, 0.00, 0.00, 0.20, 0.00, 0.00, 0.00),  # medium: good coder
    (0.00, 0.00, 0.00, 0.00, 0.20, 0.30, 0.30, 0.30),  # large: strongest at math / reasoning / planning
)
PLANNING_ROLE_PROBS = (0.40, 0.40, 0.20)  # plan, execute, verify
REPEAT_FRACTION = 0.03
CHARS_PER_TOKEN = (4.0, 3.8, 3.6, 4.2)
VERBOSITY = (0.85, 1.0, 1.1, 1.25)
OUTPUT_BASE = {
    "chat": 160, "summarize": 120, "extract": 70, "classify": 8,
    "code": 260, "math": 180, "reasoning": 220, "planning": 300,
}
LATENCY_BASE_MS = (120.0, 220.0, 420.0, 850.0)
MS_PER_OUTPUT_TOKEN = (4.0, 7.0, 14.0, 28.0)
START = np.datetime64("2025-01-06T00:00:00", "s")
SPAN_SECONDS = 28 * 24 * 3600


def demo_catalog() -> Catalog:
    """The SYNTHETIC four-tier demo catalog (fictional models ``demo-nano`` ... ``demo-large``)."""
    return Catalog(
        name="demo",
        tiers=[
            Tier(name="nano", model="demo-nano", provider="synthetic", input_usd_per_1m=0.10,
                 output_usd_per_1m=0.40, batch_discount=0.5, typical_output_tokens=150),
            Tier(name="small", model="demo-small", provider="synthetic", input_usd_per_1m=0.50,
                 output_usd_per_1m=1.50, batch_discount=0.5, typical_output_tokens=170),
            Tier(name="medium", model="demo-medium", provider="synthetic", input_usd_per_1m=3.0,
                 output_usd_per_1m=15.0, typical_output_tokens=190),
            Tier(name="large", model="demo-large", provider="synthetic", input_usd_per_1m=15.0,
                 output_usd_per_1m=75.0, batch_discount=0.5, typical_output_tokens=210),
        ],
        acceptability=Acceptability(threshold=1.0, per_task={t: 0.7 for t in GRADED_TASKS}),
        planning=Planning(min_plan_tier="medium", min_verify_tier="small"),
    )


DEMO_CATALOG_HEADER = (
    "SYNTHETIC demo catalog (generated by training/demo.py: demo_catalog()).\n"
    "The models demo-nano ... demo-large are fictional; prices only look realistic.\n"
    "Replace this file with your own tiers (or draft one from your logs) before routing real traffic."
)


def demo_catalog_yaml() -> str:
    """The SYNTHETIC demo catalog as YAML with a header comment (the content of ``models/catalog.yaml``)."""
    header = "".join(f"# {line}\n" for line in DEMO_CATALOG_HEADER.splitlines())
    return header + demo_catalog().to_yaml()


def write_demo_catalog(path: str | os.PathLike[str] = DEFAULT_CATALOG_PATH) -> Path:
    """Write the SYNTHETIC demo catalog YAML atomically (default: ``models/catalog.yaml``)."""
    return write_text_atomic(Path(path), demo_catalog_yaml())


# ---- word pools -------------------------------------------------------------------------------------------------
_NAMES = ("Alice", "Bruno", "Chen", "Dana", "Emeka", "Fatima", "Goran", "Hiro", "Ines", "Jonas", "Kavya", "Luis",
          "Mira", "Noah", "Olga", "Priya")
_COMPANIES = ("Acme Corp", "Globex", "Initech", "Umbrella Health", "Stark Logistics", "Wayne Foods", "Hooli",
              "Vandelay Imports", "Nordwind Energy", "Bluebird Travel")
_CITIES = ("Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Lima", "Dublin", "Hanoi", "Austin", "Porto")
_SUBJECTS = ("The team", "Our supplier", "The new policy", "The marketing department", "The pilot project",
             "Revenue", "The customer", "The committee", "The prototype", "Support volume", "The board",
             "The data platform")
_VERBS = ("increased", "reduced", "delayed", "approved", "rejected", "reviewed", "launched", "postponed",
          "exceeded", "missed", "renegotiated", "audited")
_OBJECTS = ("the budget", "the deadline", "the rollout", "the hiring plan", "the quarterly target",
            "the vendor contract", "the safety audit", "the migration", "the price change", "the roadmap",
            "the onboarding flow", "the retention campaign")
_TIMES = ("last week", "in March", "on Tuesday", "during Q3", "yesterday", "earlier this year",
          "after the review", "before the holidays")
_DOC_KINDS = ("meeting notes", "customer email", "incident report", "press release", "research abstract",
              "product review", "policy memo", "support ticket", "news article", "project update")
_CONSTRAINTS = ("Use a formal tone.", "Keep the answer under {n} words.", "Do not use bullet points.",
                "Cite the relevant sentence numbers.", "Answer in valid JSON.",
                "Include a short justification for each point.", "Write for a non-technical audience.",
                "State any assumptions explicitly.", "Preserve all numeric values exactly.",
                "Return the result as a Markdown table.", "Do not mention {name} by name.",
                "Use British spelling.", "Mention the date format you assume.")
_HARD_MARKERS = ("Think step by step and check your work before answering.",
                 "Be rigorous: justify every step.", "Consider edge cases carefully.",
                 "Several interpretations are possible; address each of them.",
                 "Make sure the answer satisfies all of the constraints above at the same time.",
                 "First analyse the problem, then draft an answer, then critique and revise it.")
_EASY_OPENERS = ("Quick question:", "Simple one:", "Just briefly:", "Hi!", "Easy task:", "")
_CHAT_EASY = ("what the capital of {country} is", "a good name for a pet {animal}", "how to boil an egg",
              "a synonym for 'happy'", "what time zone {city} is in", "a fun fact about {animal}s",
              "how many days there are in a leap year", "what a haiku is")
_CHAT_OPTIONS = ("a laptop and a tablet", "Python and Rust", "renting and buying a flat", "a gym and running outdoors",
                 "a master's degree and a job offer", "PostgreSQL and MongoDB", "an electric car and a hybrid")
_CHAT_CONCERNS = ("my budget of {n} euros", "long-term maintenance", "my family's needs", "resale value",
                  "the learning curve", "environmental impact", "the tax implications", "risk if things go wrong")
_COUNTRIES = ("France", "Kenya", "Peru", "Japan", "Canada", "Poland", "Vietnam", "Ireland")
_ANIMALS = ("otter", "parrot", "hedgehog", "goldfish", "tortoise", "rabbit", "gecko", "corgi")
_ENTITIES = ("dates", "person names", "company names", "amounts of money", "percentages", "city names",
             "email addresses", "product codes")
_FORMATS = ("a JSON list", "a comma-separated line", "a Markdown table", "a YAML mapping")
_CLASS_LABELS = ("positive, negative or neutral", "spam or not spam", "urgent or routine", "bug report, feature "
                 "request or question", "billing, shipping, returns, account, technical, legal or other")
_REVIEW_BITS = ("The delivery was late but the support agent was helpful.", "Absolutely loved it.",
                "It broke after two days.", "Not sure how I feel about the new design.",
                "The price went up again without notice.", "Great value, would order again.",
                "I was charged twice and nobody answers my emails.", "Works as described, nothing special.",
                "The manual contradicts the website.", "Honestly better than expected, apart from the noise.")
_CODE_TASKS = ("reverses a string", "checks whether a number is prime", "counts word frequencies in a text",
               "merges two sorted lists", "parses a CSV line", "computes a moving average",
               "validates an email address", "flattens a nested list", "finds duplicate files by hash",
               "implements an LRU cache", "schedules jobs with dependencies", "computes the edit distance")
_CODE_REQS = ("Add type hints.", "Handle empty input.", "It must run in O(n log n) time.",
              "Write unit tests with pytest.", "Do not use external libraries.", "Make it thread-safe.",
              "Stream the input instead of loading it into memory.",
              "Raise a ValueError with a clear message on bad input.", "Document the function with a docstring.")
_CODE_LINES = ("def process(items):", "    result = []", "    for i in range(len(items)):",
               "        if items[i] > threshold:", "            result.append(items[i] * 2)",
               "    cache = {}", "    while queue:", "        node = queue.pop(0)", "    return sorted(result)",
               "        total += weights[i] * values[i]", "    except KeyError:", "        pass")
_REASON_SETS = ("engineers", "musicians", "chess players", "gardeners", "pilots", "bakers", "painters", "runners")
_PLAN_GOALS = ("migrate our billing database to a new provider", "launch a newsletter for a small bakery",
               "organise a two-day offsite for 40 people", "reduce cloud costs by 20 percent",
               "set up continuous integration for a Python monorepo", "prepare a grant application",
               "move a team from Jira to GitHub Issues", "roll out single sign-on to 12 internal tools")
_PLAN_STEPS = ("inventory the current setup", "agree on success criteria", "draft a timeline", "identify risks",
               "get budget approval", "run a pilot", "collect feedback", "write the runbook", "train the team",
               "switch over", "monitor for a week", "retire the old system")


class _Picker:
    """Deterministic choices from a pre-drawn row of uniforms (fast; no per-call RNG overhead)."""

    __slots__ = ("u", "i")

    def __init__(self, u: np.ndarray) -> None:
        self.u = u
        self.i = 0

    def _next(self) -> float:
        v = float(self.u[self.i % len(self.u)])
        self.i += 1
        return v

    def pick(self, pool: tuple[str, ...]) -> str:
        return pool[int(self._next() * len(pool))]

    def sample(self, pool: tuple[str, ...], k: int) -> list[str]:
        """``k`` distinct items (k <= len(pool)), order as drawn."""
        items = list(pool)
        out = []
        for _ in range(min(k, len(items))):
            out.append(items.pop(int(self._next() * len(items))))
        return out

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + int(self._next() * (hi - lo + 1))

    def chance(self, p: float) -> bool:
        return self._next() < p

    def fill(self, template: str) -> str:
        return template.format(
            n=self.integer(20, 400), name=self.pick(_NAMES), city=self.pick(_CITIES), country=self.pick(_COUNTRIES),
            animal=self.pick(_ANIMALS),
        )


def _sentence(pk: _Picker, numbers: bool) -> str:
    s = f"{pk.pick(_SUBJECTS)} {pk.pick(_VERBS)} {pk.pick(_OBJECTS)} {pk.pick(_TIMES)}"
    if numbers:
        s += f" by {pk.integer(2, 95)}% (about {pk.integer(1, 900) * 100} euros)"
    if pk.chance(0.3):
        s += f", according to {pk.pick(_NAMES)} from {pk.pick(_COMPANIES)}"
    return s + "."


def _document(pk: _Picker, d: int, numbers: bool) -> str:
    n = max(1, 2 * d - 1 + pk.integer(-1, 1))
    return " ".join(_sentence(pk, numbers and pk.chance(0.2 + 0.15 * d)) for _ in range(n))


def _decorate(pk: _Picker, d: int, body: str) -> str:
    """Add the difficulty-visible parts: easy opener, constraints, hard markers."""
    parts = []
    if d <= 2 and pk.chance(0.7):
        opener = pk.pick(_EASY_OPENERS)
        if opener:
            parts.append(opener)
    parts.append(body)
    n_constraints = max(0, d - 1 + pk.integer(-1, 1))
    parts += [pk.fill(c) for c in pk.sample(_CONSTRAINTS, n_constraints)]
    if d >= 4:
        parts += pk.sample(_HARD_MARKERS, d - 3)
    return " ".join(parts)


def _chat(pk: _Picker, d: int) -> str:
    if d <= 2:
        return f"Can you tell me {pk.fill(pk.pick(_CHAT_EASY))}?"
    concerns = " ".join(f"I care about {pk.fill(c)}." for c in pk.sample(_CHAT_CONCERNS, d - 1))
    return (f"I'm trying to decide between {pk.pick(_CHAT_OPTIONS)} and I live in {pk.pick(_CITIES)}. {concerns} "
            "What would you recommend, and what are the trade-offs?")


def _summarize(pk: _Picker, d: int) -> str:
    kind = pk.pick(_DOC_KINDS)
    return f"Summarize the following {kind} in {pk.integer(1, 2 + d)} sentences.\n\n{_document(pk, d, numbers=d >= 3)}"


def _extract(pk: _Picker, d: int) -> str:
    ents = pk.sample(_ENTITIES, 1 + (d >= 3) + (d >= 5))
    return (f"Extract all {' and '.join(ents)} from the text below and return them as {pk.pick(_FORMATS)}.\n\n"
            f"{_document(pk, d, numbers=True)}")


def _classify(pk: _Picker, d: int) -> str:
    labels = _CLASS_LABELS[min(len(_CLASS_LABELS) - 1, d - 1 + pk.integer(-1, 0))]
    reviews = " ".join(pk.sample(_REVIEW_BITS, 1 + d // 2))
    multi = " It may belong to several categories; list all that apply." if d >= 4 else ""
    return f"Classify this message as {labels}.{multi}\n\nMessage: \"{reviews}\""


def _code(pk: _Picker, d: int) -> str:
    task = _CODE_TASKS[min(len(_CODE_TASKS) - 1, 2 * (d - 1) + pk.integer(0, 3))]
    reqs = " ".join(pk.sample(_CODE_REQS, d - 1))
    text = f"Write a Python function that {task}. {reqs}".strip()
    if d >= 3:
        lines = "\n".join(pk.pick(_CODE_LINES) for _ in range(2 * d + pk.integer(0, 3)))
        verb = "Fix the bug in" if pk.chance(0.5) else "Refactor"
        text += f"\n\n{verb} this existing code and reuse what you can:\n```python\n{lines}\n```"
    return text


def _math(pk: _Picker, d: int) -> str:
    if d == 1:
        return f"What is {pk.integer(2, 99)} + {pk.integer(2, 99)}?"
    if d == 2:
        return f"What is {pk.integer(12, 99)} * {pk.integer(3, 19)} - {pk.integer(10, 500)}?"
    if d == 3:
        return (f"{pk.pick(_NAMES)} buys {pk.integer(3, 40)} items at {pk.integer(2, 90)}.{pk.integer(10, 99)} euros "
                f"each and pays with a {pk.pick(('50', '100', '200', '500'))} euro note. A {pk.integer(5, 30)}% "
                f"discount applies to the total. How much change does {pk.pick(_NAMES)} get?")
    if d == 4:
        return (f"A tank holds {pk.integer(200, 5000)} litres. Pipe A fills it in {pk.integer(3, 20)} hours, pipe B in "
                f"{pk.integer(3, 20)} hours, and a leak empties it in {pk.integer(10, 60)} hours. Starting half full, "
                f"pipe B is closed after {pk.integer(1, 5)} hours. When is the tank full? Give the answer in hours "
                "and minutes, and show each step.")
    return (f"Find all integer solutions (x, y) of x^2 - {pk.integer(2, 13)}y^2 = {pk.integer(1, 9)} with "
            f"|x| < {pk.integer(100, 10000)}, and prove that your list is complete. Then generalise the argument to "
            f"x^2 - {pk.integer(14, 61)}y^2 = 1.")


def _reasoning(pk: _Picker, d: int) -> str:
    sets = pk.sample(_REASON_SETS, min(len(_REASON_SETS), d + 2))
    premises = [
        f"All {a} are {b}." if pk.chance(0.6) else f"Some {a} are not {b}." for a, b in itertools.pairwise(sets)
    ]
    people = " ".join(f"{n} is one of the {pk.pick(tuple(sets))}." for n in pk.sample(_NAMES, max(1, d - 2)))
    question = f"Can we conclude that every {sets[0]} is a {sets[-1][:-1]}?"
    if d >= 4:
        question += " If not, construct a counterexample; if yes, give a proof."
    return f"Consider the following premises. {' '.join(premises)} {people} {question}"


def _planning(pk: _Picker, d: int, role: str) -> str:
    goal = pk.pick(_PLAN_GOALS)
    steps = pk.sample(_PLAN_STEPS, 2 + d)
    plan = "\n".join(f"{i}. {s.capitalize()}." for i, s in enumerate(steps, start=1))
    if role == "plan":
        return (f"Create a step-by-step plan to {goal}. The plan must have at most {2 + d + pk.integer(0, 3)} steps, "
                "name an owner for each step and list the dependencies between steps.")
    if role == "execute":
        k = pk.integer(1, len(steps))
        return f"We are executing this plan to {goal}:\n{plan}\n\nCarry out step {k} now and report the result."
    return (f"Verify the result of the following plan to {goal}:\n{plan}\n\nCheck that every step was completed "
            "and that the outcome meets the goal. Answer PASS or FAIL with reasons.")


_BUILDERS = {"chat": _chat, "summarize": _summarize, "extract": _extract, "classify": _classify, "code": _code,
             "math": _math, "reasoning": _reasoning}


def _prompt_text(pk: _Picker, task: str, d_text: int, role: str) -> str:
    body = _planning(pk, d_text, role) if task == "planning" else _BUILDERS[task](pk, d_text)
    return _decorate(pk, d_text, body)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def demo_log(n_prompts: int = 3000, seed: int = 0) -> pd.DataFrame:
    """A SYNTHETIC routing log in the canonical long format (deterministic for ``seed``; see the module docstring).

    Columns: prompt_id, prompt, model, score, cost_usd, input_tokens, output_tokens, latency_ms, task, role,
    timestamp, difficulty, synthetic.
    """
    if n_prompts < 1:
        raise ValueError("n_prompts must be >= 1")
    rng = np.random.Generator(np.random.PCG64(seed))
    catalog = demo_catalog()
    n_tiers = len(TIERS)

    # --- prompts ----------------------------------------------------------------------------------------------
    task_idx = rng.choice(len(TASKS), size=n_prompts, p=np.array(TASK_PROBS) / sum(TASK_PROBS))
    d = rng.choice(np.arange(1, 6), size=n_prompts, p=DIFFICULTY_PROBS)
    jitter = rng.choice(np.array([-1, 0, 1]), size=n_prompts, p=APPARENT_JITTER_PROBS)
    d_text = np.clip(d + jitter, 1, 5)
    hidden = rng.normal(0.0, HIDDEN_NOISE_SD, size=n_prompts)
    role_draw = rng.choice(np.array(["plan", "execute", "verify"], dtype=object), size=n_prompts, p=PLANNING_ROLE_PROBS)
    roles = np.where(np.array(TASKS)[task_idx] == "planning", role_draw, "single").astype(object)
    uniforms = rng.random((n_prompts, 96))
    tasks = np.array(TASKS, dtype=object)[task_idx]
    prompts = np.array(
        [_prompt_text(_Picker(uniforms[i]), tasks[i], int(d_text[i]), roles[i]) for i in range(n_prompts)],
        dtype=object,
    )
    prompt_offset = np.sort(rng.integers(0, SPAN_SECONDS, size=n_prompts))

    # --- attempts: every prompt x every tier, plus ~3% repeats ---------------------------------------------------
    p_idx = np.repeat(np.arange(n_prompts), n_tiers)
    t_idx = np.tile(np.arange(n_tiers), n_prompts)
    repeat = rng.random(p_idx.size) < REPEAT_FRACTION
    p_idx = np.concatenate([p_idx, p_idx[repeat]])
    t_idx = np.concatenate([t_idx, t_idx[repeat]])
    attempt_no = np.concatenate([np.zeros(repeat.size, dtype=int), np.ones(int(repeat.sum()), dtype=int)])
    order = np.lexsort((attempt_no, t_idx, p_idx))
    p_idx, t_idx, attempt_no = p_idx[order], t_idx[order], attempt_no[order]
    m = p_idx.size

    skill = np.array(SKILL)[t_idx]
    affinity = np.array(AFFINITY)[t_idx, task_idx[p_idx]]
    p_ok = _sigmoid(SHARPNESS * (skill + affinity - d[p_idx] - hidden[p_idx]))
    ok = rng.random(m) < p_ok

    graded = np.isin(tasks[p_idx], GRADED_TASKS)
    good = 0.70 + 0.30 * rng.beta(4.0, 2.0, size=m)
    bad = 0.70 * rng.beta(2.0, 2.5, size=m)
    graded_score = np.where(ok, np.round(good, 2), np.floor(bad * 100) / 100)
    score = np.where(graded, graded_score, ok.astype(float))

    prompt_len = np.array([len(p) for p in prompts], dtype=float)[p_idx]
    in_tok = np.maximum(1, np.round(prompt_len / np.array(CHARS_PER_TOKEN)[t_idx] * (1 + rng.normal(0, 0.03, m))))
    base_out = np.array([OUTPUT_BASE[t] for t in TASKS], dtype=float)[task_idx[p_idx]]
    out_tok = np.maximum(
        1, np.round(base_out * (0.6 + 0.2 * d[p_idx]) * np.array(VERBOSITY)[t_idx] * rng.lognormal(0, 0.25, m))
    )
    price_in = np.array([t.input_usd_per_1m for t in catalog.tiers], dtype=float)[t_idx]
    price_out = np.array([t.output_usd_per_1m for t in catalog.tiers], dtype=float)[t_idx]
    cost = (in_tok * price_in + out_tok * price_out) / 1e6
    latency = np.round(
        np.array(LATENCY_BASE_MS)[t_idx] + out_tok * np.array(MS_PER_OUTPUT_TOKEN)[t_idx] * rng.lognormal(0, 0.2, m), 1
    )
    seconds = prompt_offset[p_idx] + 5 * t_idx + 600 * attempt_no + rng.integers(0, 5, m)
    timestamp = pd.to_datetime(START + seconds.astype("timedelta64[s]")).tz_localize("UTC")

    return pd.DataFrame(
        {
            "prompt_id": pd.array([f"demo-{i:05d}" for i in p_idx], dtype="str"),
            "prompt": pd.array(prompts[p_idx], dtype="str"),
            "model": pd.array(np.array(catalog.models, dtype=object)[t_idx], dtype="str"),
            "score": score.astype("float64"),
            "cost_usd": cost,
            "input_tokens": in_tok.astype("float64"),
            "output_tokens": out_tok.astype("float64"),
            "latency_ms": latency.astype("float64"),
            "task": pd.array(tasks[p_idx], dtype="str"),
            "role": pd.array(roles[p_idx], dtype="str"),
            "timestamp": timestamp,
            "difficulty": d[p_idx].astype("int64"),
            "synthetic": np.ones(m, dtype=bool),
        }
    )


def write_demo_log(path: str | os.PathLike[str], n_prompts: int = 3000, seed: int = 0) -> Path:
    """Write the SYNTHETIC demo log atomically; format by extension (.csv, .csv.gz, .parquet/.pq, .jsonl/.ndjson,
    .json = JSON array of records)."""
    p = Path(path)
    name = p.name.lower()
    df = demo_log(n_prompts=n_prompts, seed=seed)
    writers = {
        ".csv.gz": lambda f: df.to_csv(f, index=False, compression="gzip"),
        ".csv": lambda f: df.to_csv(f, index=False),
        ".parquet": lambda f: df.to_parquet(f, index=False),
        ".pq": lambda f: df.to_parquet(f, index=False),
        ".jsonl": lambda f: df.to_json(f, orient="records", lines=True, date_format="iso", double_precision=15),
        ".ndjson": lambda f: df.to_json(f, orient="records", lines=True, date_format="iso", double_precision=15),
        ".json": lambda f: df.to_json(f, orient="records", date_format="iso", double_precision=15),
    }
    ext = next((e for e in writers if name.endswith(e)), None)
    if ext is None:
        raise ValueError(f"{p}: unsupported extension; use one of {', '.join(writers)}")
    with atomic_path(p) as tmp:
        writers[ext](str(tmp))
    return p
