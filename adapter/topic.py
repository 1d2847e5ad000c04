"""MQTT topic filters and the mapping files' topic patterns. Pure.

A pattern such as `tele/{device}/SENSOR` or `zigbee2mqtt/{name...}/availability` compiles
to an MQTT subscription filter (`tele/+/SENSOR`, `zigbee2mqtt/#`) plus a matcher that
captures the named parts. Matching follows the MQTT specification (§4.7): '#' matches the
parent level, '+' matches empty levels, wildcards at the first level do not match '$'
topics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\.\.\.)?\}")


class TopicError(ValueError):
    """An invalid MQTT topic, filter or pattern; the message says which rule it breaks."""


def validate_filter(topic_filter: str) -> None:
    """Reject filters a broker would refuse (MQTT 3.1.1/5 §4.7)."""
    if not topic_filter:
        raise TopicError("a topic filter must be at least one character long")
    if "\x00" in topic_filter:
        raise TopicError("a topic filter must not contain U+0000")
    if len(topic_filter.encode("utf-8")) > 65535:
        raise TopicError("a topic filter must be at most 65535 bytes")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise TopicError(f"'#' must be the whole last level, not {level!r}")
        if "+" in level and level != "+":
            raise TopicError(f"'+' must occupy a whole level, not {level!r}")


def validate_topic_name(topic: str) -> None:
    """A topic a client publishes to: no wildcards."""
    if not topic:
        raise TopicError("a topic name must be at least one character long")
    if "+" in topic or "#" in topic:
        raise TopicError(f"a topic name must not contain wildcards: {topic!r}")
    if "\x00" in topic:
        raise TopicError("a topic name must not contain U+0000")
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape
        raise TopicError("a topic name must be valid UTF-8") from None
    if size > 65535:
        raise TopicError("a topic name must be at most 65535 bytes")


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Does `topic` match `topic_filter`? The MQTT rule, as a reference implementation."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(f_levels):
        if level == "#":
            return True
        if index >= len(t_levels):
            return False
        if level != "+" and level != t_levels[index]:
            return False
    return len(f_levels) == len(t_levels)


def subscriptions(
    device: Iterable[str], discovery: Iterable[str], prefix: str = "", group: str = ""
) -> list[str]:
    """The filters an instance subscribes to (issue [15]): device filters behind the
    partition prefix (`MQTT_TOPIC_PREFIX`, `part/0/`) and in the shared group
    (`MQTT_SHARED_GROUP`: `$share/<group>/<filter>`); discovery filters as they are, since
    they are keyed by MAC, node or bridge and every instance reads all of them."""
    shared = f"$share/{group}/" if group else ""
    wanted = {shared + prefix + topic_filter for topic_filter in device}
    wanted.update(discovery)
    return sorted(wanted)


def strip_prefix(topic: str, prefix: str) -> str:
    """A received topic as its device published it: without the partition prefix."""
    return topic[len(prefix) :] if prefix and topic.startswith(prefix) else topic


@dataclass(frozen=True)
class TopicPattern:
    """A topic with named placeholders: `{name}` one level, `{name...}` one or more levels."""

    text: str
    mqtt_filter: str
    names: tuple[str, ...]
    _regex: re.Pattern[str] | None  # None: `_levels` matches without a regex
    wildcards: int  # for precedence: fewer wildcards is more specific
    literal_levels: int
    # For patterns of literal levels and {name} placeholders only (nearly all): per level,
    # (is a placeholder, text). Level by level is faster than a regex, and compiling
    # 10,000 regexes would cost most of the start-up with 10,000 rules.
    _levels: tuple[tuple[bool, str], ...] | None = None

    @classmethod
    def compile(cls, text: str) -> TopicPattern:
        if not text:
            raise TopicError("a topic pattern must not be empty")
        levels = text.split("/")
        # Nearly every pattern: literal levels and {name} placeholders. What `_compile`
        # makes of it, in a third of the time (10,000 rules at start-up).
        if "+" not in levels and "#" not in levels and "..." not in text:
            names: list[str] = []
            simple: list[tuple[bool, str]] = []
            filter_levels: list[str] = []
            for level in levels:
                if "{" in level or "}" in level:
                    match = _PLACEHOLDER.fullmatch(level)
                    if match is None or match.group(1) in names:
                        break  # an error: `_compile` words it
                    names.append(match.group(1))
                    simple.append((True, match.group(1)))
                    filter_levels.append("+")
                else:
                    simple.append((False, level))
                    filter_levels.append(level)
            else:
                mqtt_filter = "/".join(filter_levels)
                validate_filter(mqtt_filter)
                literal = len(levels) - len(names)
                return cls(
                    text, mqtt_filter, tuple(names), None, len(names), literal, tuple(simple)
                )
        return cls._compile(text, levels)

    @classmethod
    def _compile(cls, text: str, levels: list[str]) -> TopicPattern:
        filter_levels: list[str] = []
        check_levels: list[str] = []  # placeholders as '+': where raw wildcards may stand
        regex_parts: list[str] = []
        names: list[str] = []
        multi_seen = False
        literal = 0
        for level in levels:
            match = _PLACEHOLDER.fullmatch(level)
            if match:
                name, multi = match.group(1), bool(match.group(2))
                if name in names:
                    raise TopicError(f"placeholder {{{name}}} appears twice in {text!r}")
                names.append(name)
                check_levels.append("+")
                if multi:
                    if multi_seen:
                        raise TopicError(f"only one {{name...}} placeholder allowed: {text!r}")
                    multi_seen = True
                    regex_parts.append(f"(?P<{name}>.+)")
                    filter_levels.append("#")
                else:
                    regex_parts.append(f"(?P<{name}>[^/]*)")
                    filter_levels.append("+")
                continue
            if "{" in level or "}" in level:
                raise TopicError(
                    f"a placeholder must fill a whole level ({{name}} or {{name...}}): {level!r}"
                )
            check_levels.append(level)
            if level in ("+", "#"):
                filter_levels.append(level)
                regex_parts.append("[^/]*" if level == "+" else ".*")
            else:
                literal += 1
                filter_levels.append(level)
                regex_parts.append(re.escape(level))
        # The pattern's own wildcards must stand where MQTT allows them ('foo/#/bar',
        # '#/x', 'foo#' are invalid), whatever the multi-level placeholders do below.
        validate_filter("/".join(check_levels))
        # MQTT has '#' only at the end: a multi-level placeholder with levels after it
        # subscribes to everything below the prefix and the regex checks the rest.
        if "#" in filter_levels:
            cut = filter_levels.index("#")
            filter_levels = [*filter_levels[:cut], "#"]
        mqtt_filter = "/".join(filter_levels)
        validate_filter(mqtt_filter)
        if levels[-1] == "#" and len(levels) > 1:  # '#' also matches the parent level
            regex = "/".join(regex_parts[:-1]) + "(?:/.*)?"
        else:  # a lone '#' matches every topic
            regex = "/".join(regex_parts)
        wildcards = sum(1 for lv in filter_levels if lv in ("+", "#"))
        if not multi_seen and "+" not in levels and "#" not in levels:
            simple = tuple(
                (m is not None, m.group(1) if m is not None else level)
                for level in levels
                for m in [_PLACEHOLDER.fullmatch(level)]
            )
            return cls(text, mqtt_filter, tuple(names), None, wildcards, literal, simple)
        return cls(text, mqtt_filter, tuple(names), re.compile(regex), wildcards, literal)

    def match(self, topic: str) -> dict[str, str] | None:
        if topic.startswith("$") and self.mqtt_filter[:1] in ("+", "#"):
            return None
        if self._levels is not None:
            parts = topic.split("/")
            if len(parts) != len(self._levels):
                return None
            values = {}
            for (is_name, text), part in zip(self._levels, parts, strict=True):
                if is_name:
                    values[text] = part
                elif text != part:
                    return None
            return values
        assert self._regex is not None
        found = self._regex.fullmatch(topic)
        return None if found is None else {k: v for k, v in found.groupdict().items()}

    def render(self, values: dict[str, str]) -> str:
        def fill(match: re.Match[str]) -> str:
            return values[match.group(1)]

        return _PLACEHOLDER.sub(fill, self.text)


def placeholders(template: str) -> list[str]:
    return [m.group(1) for m in _PLACEHOLDER.finditer(template)]


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill `{name}` placeholders in a device or payload template; unknown names raise."""

    def fill(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return _PLACEHOLDER.sub(fill, template)


def template_regex(template: str) -> re.Pattern[str]:
    """The inverse of render_template: recover the placeholder values from a rendered text."""
    parts: list[str] = []
    last = 0
    named: set[str] = set()
    for match in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last : match.start()]))
        name = match.group(1)
        if name in named:  # `{topic}-{topic}`: the same text again
            parts.append(f"(?P={name})")
        else:
            named.add(name)
            parts.append(f"(?P<{name}>.+?)" if match.group(2) else f"(?P<{name}>[^/]+?)")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))
