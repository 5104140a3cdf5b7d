"""Request parameters the Stripe way: form-encoded bracket notation or JSON, read into one tree.

`items[0][price]=p&amount[monetary][value]=1000` and `{"items": [{"price": "p"}]}` give the same
tree. `Params` reads typed values from it, names the exact parameter in every error
(`items[0][price]`), and rejects parameters nobody read (Stripe's "Received unknown parameter").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from api.errors import ApiError, invalid, missing, unknown

_KEY_PART = re.compile(r"\[([^\[\]]*)\]")
# Limits on the shape of what a request sends (its size: Settings.max_request_body_bytes; its
# numbers: billing.money, "Bounds"). Each answers 400, never 500.
MAX_DEPTH = 6  # names on one path: amount[monetary][value] is 3, like {"amount": {"monetary": {"value": ..}}}
MAX_PARAMETERS = 10_000  # values in the query string, and in the body (form fields or JSON leaves)
INVALID_INTEGER = "parameter_invalid_integer"  # Stripe's code for an integer that is malformed or out of range
MAX_LIST_INDEX_DIGITS = 4  # items[9999]: every list is far shorter (see each reader's max_items)
# Accepted everywhere and not acted on: the SDKs send `expand` for nested objects we already inline.
IGNORED = frozenset({"expand"})


def _too_many() -> ApiError:
    return ApiError(f"Too many parameters: a request can send at most {MAX_PARAMETERS} values.",
                    code="parameter_invalid")


def _too_deep() -> ApiError:
    return ApiError(f"Parameters nest too deep: at most {MAX_DEPTH} names on one path.", code="parameter_invalid")


def parse_form(text: str) -> dict[str, Any]:
    """The parameter tree of a form-encoded (or query) string."""
    if text.count("&") >= MAX_PARAMETERS:
        raise _too_many()
    pairs = parse_qsl(text, keep_blank_values=True)
    tree: dict[str, Any] = {}
    for key, value in pairs:
        head, _, rest = key.partition("[")
        parts = [head] + (_KEY_PART.findall("[" + rest) if rest else [])
        if not head or len(parts) > MAX_DEPTH or (rest and "".join(f"[{p}]" for p in parts[1:]) != "[" + rest):
            raise invalid(key, f"Invalid parameter name: {key}")
        node = tree
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if part == "":  # `expand[]=a&expand[]=b`: append
                part = str(len(node))
            if last:
                if isinstance(node.get(part), dict):
                    raise invalid(key, f"Invalid parameter: {key} is both a value and an object")
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise invalid(key, f"Invalid parameter: {key} is both a value and an object")
                node = child
    return tree


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object body, within MAX_DEPTH and MAX_PARAMETERS (numbers with a point or an exponent
    become Decimal, never float)."""
    try:
        tree = json.loads(body, parse_float=Decimal)
    except RecursionError as exc:  # the decoder recurses per level: ~1000 levels exhaust the stack
        raise _too_deep() from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"Invalid JSON body: {str(exc)[:200]}", code="parameter_invalid") from exc
    if not isinstance(tree, dict):
        raise ApiError("The JSON body must be an object.", code="parameter_invalid")
    _check_shape(tree)
    return tree


def _check_shape(tree: dict[str, Any]) -> None:
    """Depth and leaf count of a decoded JSON tree, walked without recursion."""
    leaves = 0
    pending: list[tuple[Any, int]] = [(tree, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH and node:
                raise _too_deep()
            pending.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
        else:
            leaves += 1
            if leaves > MAX_PARAMETERS:
                raise _too_many()


def _is_list_like(value: Any) -> bool:
    return isinstance(value, list) or (isinstance(value, dict) and bool(value)
                                       and all(k.isascii() and k.isdigit() for k in value))


def _as_list(value: Any, name: str, max_items: int) -> list[Any]:
    """A list, or the items of `items[0]=..&items[1]=..` in index order; an index past `max_items`
    is refused before it is ever read as a number (`items[99999...]`)."""
    if isinstance(value, list):
        items = value
    else:
        if any(len(key) > MAX_LIST_INDEX_DIGITS or int(key) >= max_items for key in value):
            raise invalid(name, f"{name} can have at most {max_items} items (indexes 0 to {max_items - 1})")
        items = [value[key] for key in sorted(value, key=int)]
    if len(items) > max_items:
        raise invalid(name, f"{name} can have at most {max_items} items")
    return items


class Params:
    """Typed, named access to one level of the parameter tree; `done()` rejects what was not read."""

    def __init__(self, tree: dict[str, Any], prefix: str = "") -> None:
        self._tree = tree
        self._prefix = prefix
        self._read: set[str] = set()
        self._children: list[Params] = []

    def name(self, key: str) -> str:
        return f"{self._prefix}[{key}]" if self._prefix else key

    def has(self, key: str) -> bool:
        return key in self._tree

    def raw(self, key: str) -> Any:
        self._read.add(key)
        return self._tree.get(key)

    def str(self, key: str, *, required: bool = False, max_length: int = 5000, choices: Iterable[str] | None = None,
            empty_is_none: bool = False) -> str | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise missing(self.name(key))
            return None
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise invalid(self.name(key), f"Invalid string: {self.name(key)} must be a string")
        value = str(value)
        if value == "" and empty_is_none:
            return None
        if value == "" and required:
            raise missing(self.name(key))
        if len(value) > max_length:
            raise invalid(self.name(key), f"{self.name(key)} must be at most {max_length} characters")
        if choices is not None and value not in choices:
            raise invalid(self.name(key), f"Invalid {self.name(key)}: must be one of {', '.join(choices)}")
        return value

    def int(self, key: str, *, required: bool = False, minimum: int | None = None, maximum: int | None = None,
            default: int | None = None, empty_is_none: bool = False) -> int | None:
        value = self.raw(key)
        if value is None or (value == "" and empty_is_none):
            if required:
                raise missing(self.name(key))
            return default
        if isinstance(value, bool):
            raise invalid(self.name(key), f"Invalid integer: {value}", code=INVALID_INTEGER)
        if isinstance(value, str):
            if not re.fullmatch(r"-?[0-9]{1,18}", value.strip()):
                raise invalid(self.name(key), f"Invalid integer: {value[:50]}", code=INVALID_INTEGER)
            value = int(value)
        elif not isinstance(value, int):
            raise invalid(self.name(key), f"Invalid integer: {self.name(key)}", code=INVALID_INTEGER)
        if abs(value) >= 2**63:
            raise invalid(self.name(key), f"Invalid integer: {self.name(key)} is out of range", code=INVALID_INTEGER)
        if minimum is not None and value < minimum:
            raise invalid(self.name(key), f"{self.name(key)} must be at least {minimum}", code=INVALID_INTEGER)
        if maximum is not None and value > maximum:
            raise invalid(self.name(key), f"{self.name(key)} must be at most {maximum}", code=INVALID_INTEGER)
        return value

    def bool(self, key: str, *, default: bool | None = None) -> bool | None:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise invalid(self.name(key), f"Invalid boolean: {str(value)[:50]}")

    def decimal(self, key: str, *, required: bool = False) -> Decimal | None:
        value = self.raw(key)
        if value is None:
            if required:
                raise missing(self.name(key))
            return None
        if isinstance(value, bool) or isinstance(value, float):
            raise invalid(self.name(key), f"Invalid decimal: {value}")
        try:
            result = Decimal(str(value).strip())
        except ArithmeticError as exc:
            raise invalid(self.name(key), f"Invalid decimal: {str(value)[:50]}") from exc
        if not result.is_finite():
            raise invalid(self.name(key), f"Invalid decimal: {str(value)[:50]}")
        return result

    def object(self, key: str, *, required: bool = False) -> Params | None:
        value = self.raw(key)
        if value is None or value == "":
            if required:
                raise missing(self.name(key))
            return None
        if not isinstance(value, dict):
            raise invalid(self.name(key), f"Invalid object: {self.name(key)} must be an object")
        child = Params(value, self.name(key))
        self._children.append(child)
        return child

    def list(self, key: str, *, required: bool = False, max_items: int = 100) -> list[Any]:
        """Raw list items (each a value or a dict); a dict item can be wrapped with `item()`."""
        value = self.raw(key)
        if value is None or value == "":
            if required:
                raise missing(self.name(key))
            return []
        if not _is_list_like(value):
            raise invalid(self.name(key), f"Invalid array: {self.name(key)} must be an array")
        return _as_list(value, self.name(key), max_items)

    def objects(self, key: str, *, required: bool = False, max_items: int = 100) -> list[Params]:
        result = []
        for index, item in enumerate(self.list(key, required=required, max_items=max_items)):
            if not isinstance(item, dict):
                raise invalid(f"{self.name(key)}[{index}]", f"Invalid object: {self.name(key)}[{index}]")
            child = Params(item, f"{self.name(key)}[{index}]")
            self._children.append(child)
            result.append(child)
        return result

    def metadata(self, key: str = "metadata") -> dict[str, str] | None:
        """Stripe metadata: string keys (<= 40 chars) to string values (<= 500 chars), at most 50."""
        value = self.raw(key)
        if value is None:
            return None
        if value == "":
            return {}
        if not isinstance(value, dict) or len(value) > 50:
            raise invalid(self.name(key), "Invalid metadata: an object of at most 50 string keys")
        result = {}
        for item_key, item_value in value.items():
            if not isinstance(item_value, (str, int)) or isinstance(item_value, bool) or len(item_key) > 40 \
                    or len(str(item_value)) > 500:
                raise invalid(f"{self.name(key)}[{item_key}]", "Invalid metadata value")
            result[item_key] = str(item_value)
        return result

    def metadata_update(self, current: Mapping[str, str], key: str = "metadata") -> dict[str, str]:
        """`current` metadata after an update, as Stripe merges it: given keys set, a key given ""
        deleted, `metadata=""` clears all; at most 50 keys after the merge."""
        given = self.metadata(key)
        if given is None:
            return dict(current)
        merged = {} if self.raw(key) == "" else dict(current)
        for item_key, value in given.items():
            if value == "":
                merged.pop(item_key, None)
            else:
                merged[item_key] = value
        if len(merged) > 50:
            raise invalid(self.name(key), "Invalid metadata: at most 50 keys")
        return merged

    def done(self) -> None:
        """Raise for the first parameter that no reader asked for."""
        for key in self._tree:
            if key not in self._read and not (not self._prefix and key in IGNORED):
                raise unknown(self.name(key))
        for child in self._children:
            child.done()


def reject_nul(value: Any, name: str = "") -> None:
    """PostgreSQL text cannot hold NUL: refuse it in any key or string, naming where it is."""
    if isinstance(value, str):
        if "\x00" in value:
            raise invalid(name or "(body)", f"Invalid value for {name or 'the body'}: NUL characters are not allowed")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{name}[{key}]" if name else str(key)
            reject_nul(str(key), child)
            reject_nul(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            reject_nul(item, f"{name}[{index}]")


def request_params(method: str, path: str, path_params: dict[str, str], query: str, body: bytes,
                   content_type: str) -> Params:
    """The parameters of a request: its query string plus its form or JSON body (CPU-bound for a
    large body: call it from a worker thread)."""
    for key, value in path_params.items():
        if "\x00" in value or len(value) > 255:
            raise ApiError(f"Unrecognized request URL ({method}: {path}).", status=404, code="resource_missing")
    tree = parse_form(query) if query else {}
    if method in ("POST", "DELETE", "PUT", "PATCH"):
        if body:
            body_tree = parse_json(body) if "json" in content_type else parse_form(_decode(body))
            for key, value in body_tree.items():
                if key in tree:
                    raise invalid(key, f"Parameter {key} given twice (query and body)")
                tree[key] = value
    reject_nul(tree)
    return Params(tree)


def _decode(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError("The body is not UTF-8.", code="parameter_invalid") from exc
