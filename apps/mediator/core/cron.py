"""Cron expressions for periodic schedules: the five classic fields, in a time zone.

    minute hour day-of-month month day-of-week      e.g. "30 3 * * *", "*/15 9-17 * * mon-fri"

Each field takes `*`, numbers, ranges `a-b`, steps `*/n` or `a-b/n`, lists `a,b`, and
names for months (jan..dec) and days (sun..sat; 0 and 7 are Sunday). As in Vixie cron,
when both day fields are restricted a day matches either. Aliases: @yearly (@annually),
@monthly, @weekly, @daily (@midnight), @hourly.

Times are wall-clock times in the schedule's zone (zoneinfo): a time skipped by a
daylight-saving jump does not occur that day, and a time that occurs twice fires on its
first occurrence only — a schedule never fires twice for one wall-clock minute.
"""

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {
    name: i
    for i, name in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)
}
DAYS = {name: i for i, name in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (name, lowest, highest, names)
FIELDS = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, DAYS),
)
# The longest wait between two matches is under 8 years (Feb 29 on a given weekday...):
# a search that finds nothing in that span means the expression never matches.
SEARCH_DAYS = 366 * 8


class CronError(ValueError):
    """An expression or time zone that cannot be used; the message says which part."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r}") from exc


def _value(text: str, field: tuple) -> int:
    name, low, high, names = field
    number = names.get(text.lower()) if not text.isdigit() else int(text)
    if number is None or not low <= number <= high:
        raise CronError(f"{name}: {text!r} is not in {low}-{high}")
    return number


def _parse_field(text: str, field: tuple) -> frozenset[int]:
    name, low, high, _ = field
    values: set[int] = set()
    for part in text.split(","):
        span, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: step {step_text!r} is not a positive number")
            step = int(step_text)
        if span == "*":
            first, last = low, high
        elif "-" in span:
            a, _, b = span.partition("-")
            first, last = _value(a, field), _value(b, field)
            if first > last:
                raise CronError(f"{name}: range {span!r} runs backwards")
        else:
            first = _value(span, field)
            last = high if step_text else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month is "*"
    any_weekday: bool  # day of week is "*"

    @classmethod
    def parse(cls, expression: str) -> "Cron":
        text = ALIASES.get(expression.strip().lower(), expression.strip())
        parts = text.split()
        if len(parts) != 5:
            raise CronError(f"{expression!r}: a cron expression has 5 fields (minute hour day month weekday)")
        minutes, hours, days, months, weekdays = (_parse_field(p, f) for p, f in zip(parts, FIELDS, strict=True))
        return cls(
            expression,
            minutes,
            hours,
            days,
            months,
            frozenset(d % 7 for d in weekdays),
            parts[2] == "*",
            parts[4] == "*",
        )

    def _day_matches(self, day: dt.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, moment: dt.datetime, tz: ZoneInfo) -> dt.datetime:
        """The first matching time strictly after `moment` (aware), as an aware UTC datetime."""
        local = moment.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0) + dt.timedelta(minutes=1)
        limit = local + dt.timedelta(days=SEARCH_DAYS)
        while local < limit:
            if local.month not in self.months:
                local = (local.replace(day=1) + dt.timedelta(days=32)).replace(day=1, hour=0, minute=0)
            elif not self._day_matches(local.date()):
                local = local.replace(hour=0, minute=0) + dt.timedelta(days=1)
            elif local.hour not in self.hours:
                local = local.replace(minute=0) + dt.timedelta(hours=1)
            elif local.minute not in self.minutes:
                local += dt.timedelta(minutes=1)
            else:
                candidate = local.replace(tzinfo=tz)  # fold=0: the first of a repeated hour
                utc = candidate.astimezone(dt.UTC)
                # Skipped by a DST jump, or (in a repeated hour) before `moment`: not this one.
                if utc > moment and utc.astimezone(tz).replace(tzinfo=None) == local:
                    return utc
                local += dt.timedelta(minutes=1)
        raise CronError(f"{self.expression!r} never matches")
