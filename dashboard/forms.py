"""Dashboard forms run the API's own handlers: the form's field names are the API's parameter names
(`default_aggregation[formula]`, `amount[monetary][value]` ...), read by the same parser (api.params),
so validation, commands and Stripe-style messages are the API's. An error names its parameter, and
the page shows it next to the field of that name."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from api.errors import ApiError, invalid
from api.params import Params, parse_form
from dashboard.formats import parse_datetime_local

CSRF_FIELD = "csrf_token"


@dataclass
class FormResult:
    """A form's outcome: the handler's answer, or the errors by field name (None: about the form)."""

    answer: Any = None
    errors: dict[str | None, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # what was entered, to show it again

    shown: set[str | None] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_for(self, name: str) -> str | None:
        """The error of field `name`, noted as shown next to it (see unshown_errors)."""
        self.shown.add(name)
        return self.errors.get(name)

    def unshown_errors(self) -> list[str]:
        """Errors about no field of the form (e.g. a conflict): shown under the form."""
        return [message for name, message in self.errors.items() if name not in self.shown]


def _without_blanks(tree: dict[str, Any]) -> dict[str, Any]:
    """A blank field is a parameter not given (an HTML form sends every field; the API would read
    "" as a value given)."""
    result = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            value = _without_blanks(value)
            if value:
                result[key] = value
        elif value != "":
            result[key] = value
    return result


def run_form(body: str, handler: Callable[..., Any], ctx: Any, *, fixed: dict[str, Any] | None = None,
             datetime_fields: Iterable[str] = (), **path: str) -> FormResult:
    """Run `handler(ctx, Params(tree), **path)` on a form body. `fixed` adds parameters the page
    decides (the customer of a customer page's grant form); `datetime_fields` are datetime-local
    inputs (UTC) that the API takes as unix seconds."""
    values = {key: value for key, value in parse_qsl(body, keep_blank_values=True) if key != CSRF_FIELD}
    try:
        tree = parse_form(body)
        tree.pop(CSRF_FIELD, None)
        tree = _without_blanks(tree)
        for name in datetime_fields:
            if name in tree:
                try:
                    tree[name] = str(parse_datetime_local(tree[name]))
                except (TypeError, ValueError):
                    raise invalid(name, f"Invalid date and time: {name} must be like 2026-01-31T00:00 (UTC).") from None
        tree.update(fixed or {})
        return FormResult(answer=handler(ctx, Params(tree), **path), values=values)
    except ApiError as error:
        return FormResult(errors={error.param: error.message}, values=values)
