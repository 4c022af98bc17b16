"""Display-name policy: the random suffixes the maker portal appends, connectors' display names, and
the team's naming template (``naming:`` in the config). Pure; the config loader checks a template with
it, lint and import apply it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping

from reconciler.domain.model import connector_name

# The portal appends "_" + 5 hex to logical names and "-" + 5 hex to display names. Requiring a digit
# keeps ordinary words made of a-f ("faced", "decaf") from being flagged.
_SUFFIX = re.compile(r"(?:^|[_\-\s.])([0-9a-fA-F]{5})$")


def random_suffix(name: str | None) -> str | None:
    """The random five-hex suffix ``name`` ends with (``8f4b0``), or None."""
    if not name:
        return None
    m = _SUFFIX.search(name.strip())
    if m and any(ch.isdigit() for ch in m.group(1)):
        return m.group(1)
    return None


# Display names of common connectors, as the maker portal spells them in default reference names.
CONNECTOR_DISPLAY_NAMES: Mapping[str, str] = {
    "shared_sharepointonline": "SharePoint",
    "shared_office365": "Office 365 Outlook",
    "shared_office365users": "Office 365 Users",
    "shared_office365groups": "Office 365 Groups",
    "shared_commondataserviceforapps": "Microsoft Dataverse",
    "shared_teams": "Microsoft Teams",
    "shared_onedriveforbusiness": "OneDrive for Business",
    "shared_excelonlinebusiness": "Excel Online (Business)",
    "shared_approvals": "Approvals",
    "shared_planner": "Planner",
    "shared_todo": "Microsoft To-Do (Business)",
    "shared_sql": "SQL Server",
    "shared_visualstudioteamservices": "Azure DevOps",
    "shared_webcontents": "HTTP with Microsoft Entra ID",
    "shared_flowmanagement": "Power Automate Management",
    "shared_powerappsforappmakers": "Power Apps for Makers",
    "shared_azureblob": "Azure Blob Storage",
    "shared_keyvault": "Azure Key Vault",
    "shared_sendmail": "Mail",
}


def connector_display_name(connector: str) -> str:
    """``SharePoint`` for ``shared_sharepointonline``; unknown connectors give their name without
    the ``shared_`` prefix."""
    short = connector_name(connector)
    return CONNECTOR_DISPLAY_NAMES.get(short, short.removeprefix("shared_"))


PLACEHOLDERS: Mapping[str, str] = {
    "connector": "the connector's display name (SharePoint, Office 365 Outlook, ...)",
    "connector_name": "the connector's name without shared_ (sharepointonline, office365, ...)",
    "solution": "the config's solution unique name",
    "prefix": "the publisher prefix: the logical name up to its first underscore",
    "purpose": "any non-empty text, for teams with more than one reference per connector",
}


class NamingTemplate:
    """A compiled naming template such as ``"{connector} {solution}"``; ``{{`` and ``}}`` are literal
    braces. ``ValueError`` with a readable message when the template is unusable."""

    def __init__(self, template: str) -> None:
        self.template = template
        try:
            parts = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ValueError(f"naming template {template!r}: {e}") from None
        self._parts: list[tuple[str, str | None]] = []
        for literal, field, spec, conversion in parts:
            if field is not None and (field not in PLACEHOLDERS or spec or conversion):
                known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
                raise ValueError(
                    f"naming template {template!r}: unknown placeholder {{{field}}} (known: {known})"
                )
            self._parts.append((literal, field))

    def values(self, logical_name: str, connector: str, solution: str) -> dict[str, str]:
        return {
            "connector": connector_display_name(connector),
            "connector_name": connector_name(connector).removeprefix("shared_"),
            "solution": solution,
            "prefix": logical_name.split("_", 1)[0] if "_" in logical_name else "",
        }

    def pattern(self, values: Mapping[str, str]) -> re.Pattern[str]:
        out = []
        for literal, field in self._parts:
            out.append(re.escape(literal))
            if field == "purpose":
                out.append(".+")
            elif field is not None:
                out.append(re.escape(values[field]))
        return re.compile("".join(out))

    def expected(self, values: Mapping[str, str]) -> str | None:
        """The one name the template allows, or None when it has a free ``{purpose}`` part."""
        if any(field == "purpose" for _, field in self._parts):
            return None
        return "".join(literal + (values[field] if field else "") for literal, field in self._parts)

    def check(self, display_name: str, logical_name: str, connector: str, solution: str) -> str | None:
        """None when ``display_name`` follows the template, else the hint text."""
        values = self.values(logical_name, connector, solution)
        if self.pattern(values).fullmatch(display_name.strip()):
            return None
        want = self.expected(values)
        if want is not None:
            return f"rename the display name to {want!r}"
        return f"rename the display name to match {self.template!r}"
