"""Prompt-set validation with Great Expectations 1.x.

Every rule is a GX expectation over the prompt table (plus a few derived columns, such as whether a
text appears under both labels); the report names each failing row by id and rule. Great
Expectations is imported here only, and only when a set is validated: it takes seconds to import.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from steermoe.prompts import LABELS, SPLITS, fingerprint, user_text

__all__ = ["RULES", "Failure", "ValidationReport", "validate_prompts"]

# rule name -> what it checks (shown in reports and the README)
RULES = {
    "required_columns": "id, label and one of prompt/messages are present",
    "not_null": "id, label and the user text are filled in",
    "label_in_set": "label is 'safe' or 'unsafe'",
    "split_in_set": "split, when given, is 'train', 'eval', 'ood' or 'dev'",
    "unique_id": "no two rows share an id",
    "unique_text": "no two rows share the same prompt text",
    "label_conflict": "the same text never appears under both labels",
    "valid_utf8": "the text is valid UTF-8",
    "no_control_chars": "the text has no control characters (tabs and newlines are fine)",
    "length_bounds": "the text length is within the configured bounds",
    "messages_shape": "messages is a list of {role, content} ending with a user turn",
    "min_per_label": "each label has at least the configured number of rows",
    "label_imbalance": "(warning) neither label outnumbers the other by more than the configured ratio",
}

_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"


@dataclass
class Failure:
    rule: str
    id: str | None
    row: int | None
    detail: str
    severity: str = "error"


@dataclass
class ValidationReport:
    fingerprint: str
    rows: int
    counts: dict[str, int]
    failures: list[Failure] = field(default_factory=list)

    @property
    def errors(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "error"]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if f.severity == "warning"]

    @property
    def success(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "counts": self.counts,
            "failures": [asdict(f) for f in self.failures],
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, default=str)
        if path is not None:
            from steermoe.files import write_text_atomic

            write_text_atomic(path, text)
        return text

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([asdict(f) for f in self.failures], columns=["rule", "id", "row", "detail", "severity"])

    def summary(self) -> str:
        status = "passed" if self.success else "FAILED"
        by_rule = pd.Series([f.rule for f in self.errors]).value_counts().to_dict() if self.errors else {}
        rules = ", ".join(f"{k}: {v}" for k, v in by_rule.items())
        return f"validation {status}: {self.rows} rows {self.counts}" + (f"; failures {rules}" if rules else "")


def _messages_ok(messages) -> bool:
    if messages is None:
        return True
    if not isinstance(messages, list) or not messages:
        return False
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") or not isinstance(m.get("content"), str):
            return False
    return messages[-1]["role"] == "user"


def _valid_utf8(text) -> bool:
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _derived_table(prompts: pd.DataFrame) -> pd.DataFrame:
    # Plain lists and object columns: text may hold surrogate escapes (invalid UTF-8), which
    # pandas' default Arrow strings refuse.
    records = prompts.to_dict("records")
    texts = [user_text(r) if _messages_ok(r.get("messages")) else None for r in records]
    norm = [" ".join(t.lower().split()) if isinstance(t, str) else None for t in texts]
    labels_of: dict[str, set] = {}
    for t, r in zip(norm, records):
        if t is not None and r.get("label") is not None:
            labels_of.setdefault(t, set()).add(r["label"])
    columns = {
        "_row": list(range(len(records))),
        "id": [r.get("id") for r in records],
        "label": [r.get("label") for r in records],
        "split": [r.get("split") for r in records],
        # GX hashes the frame it checks, which fails on surrogates: check UTF-8 here, show U+FFFD there.
        "text": [t.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(t, str) else t for t in texts],
        "_valid_utf8": [_valid_utf8(t) for t in texts],
        "_conflict": [t is not None and len(labels_of.get(t, ())) > 1 for t in norm],
        "_messages_ok": [_messages_ok(r.get("messages")) for r in records],
    }
    return pd.DataFrame({k: pd.Series(v, dtype=object if k != "_row" else "int64") for k, v in columns.items()})


def _quiet_gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    return gx


def _run_suite(gx, frame: pd.DataFrame, expectations: list[tuple[str, object]]):
    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # progress bars are cosmetic; older/newer GX may lack this knob
        pass
    asset = context.data_sources.add_pandas("prompts").add_dataframe_asset("prompts")
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name="prompt_set")
    for rule, expectation in expectations:
        expectation.meta = {"rule": rule}
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]})
    # GX does not keep suite order in its results; the rule name travels in each expectation's meta.
    return [(res.expectation_config.meta["rule"], res) for res in result.results]


def validate_prompts(
    prompts: pd.DataFrame,
    min_chars: int = 3,
    max_chars: int = 4000,
    min_per_label: int = 10,
    imbalance_warning_ratio: float = 4.0,
) -> ValidationReport:
    """Check a prompt set against every rule in :data:`RULES` and return the report."""
    gx = _quiet_gx()
    E = gx.expectations
    failures: list[Failure] = []
    present = set(prompts.columns)
    has_text_column = ("prompt" in present and prompts["prompt"].notna().any()) or (
        "messages" in present and prompts["messages"].notna().any()
    )
    for col in ("id", "label"):
        if col not in present:
            failures.append(Failure("required_columns", None, None, f"column {col!r} is missing"))
    if not has_text_column:
        failures.append(Failure("required_columns", None, None, "neither 'prompt' nor 'messages' has any value"))
    if failures:
        return ValidationReport(fingerprint(prompts), len(prompts), {}, failures)
    table = _derived_table(prompts)
    ids = table["id"].tolist()

    expectations = [
        ("not_null", E.ExpectColumnValuesToNotBeNull(column="id")),
        ("not_null", E.ExpectColumnValuesToNotBeNull(column="label")),
        ("not_null", E.ExpectColumnValuesToNotBeNull(column="text")),
        ("label_in_set", E.ExpectColumnValuesToBeInSet(column="label", value_set=list(LABELS))),
        ("split_in_set", E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS))),
        ("unique_id", E.ExpectColumnValuesToBeUnique(column="id")),
        ("unique_text", E.ExpectColumnValuesToBeUnique(column="text")),
        ("label_conflict", E.ExpectColumnValuesToBeInSet(column="_conflict", value_set=[False])),
        ("valid_utf8", E.ExpectColumnValuesToBeInSet(column="_valid_utf8", value_set=[True])),
        ("no_control_chars", E.ExpectColumnValuesToNotMatchRegex(column="text", regex=_CONTROL)),
        ("length_bounds", E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=min_chars, max_value=max_chars)),
        ("messages_shape", E.ExpectColumnValuesToBeInSet(column="_messages_ok", value_set=[True])),
    ]
    frame = table
    for rule, res in _run_suite(gx, frame, expectations):
        if res.success:
            continue
        column = res.expectation_config.kwargs.get("column")
        unexpected = res.result.get("unexpected_index_list") or []
        if not unexpected and res.exception_info and res.exception_info.get("raised_exception"):
            failures.append(Failure(rule, None, None, f"{column}: {res.exception_info.get('exception_message')}"))
            continue
        for item in unexpected:
            row = int(item["_row"])
            value = item.get(column)
            shown = repr(value)[:60] if column in ("text", "label", "split") else ""
            detail = RULES[rule] if column.startswith("_") else f"{column} {shown}".strip()
            failures.append(Failure(rule, ids[row], row, detail))

    counts = {label: int((table["label"] == label).sum()) for label in LABELS}
    for label in LABELS:
        subset = frame[frame["label"] == label]
        (rule, res), = _run_suite(gx, subset, [("min_per_label", E.ExpectTableRowCountToBeBetween(min_value=min_per_label))])
        if not res.success:
            failures.append(Failure(rule, None, None, f"{label}: {len(subset)} rows, need at least {min_per_label}"))
    small, large = sorted(counts.values())
    if small and large / small > imbalance_warning_ratio:
        failures.append(
            Failure("label_imbalance", None, None, f"label counts {counts} exceed ratio {imbalance_warning_ratio}", "warning")
        )
    return ValidationReport(fingerprint(prompts), len(prompts), counts, failures)
