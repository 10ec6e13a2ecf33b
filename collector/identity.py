"""Identity links between accounts and HR people (DESIGN §9 "Identity links").

A person is identified by their normalised primary email; rows of ``people`` sharing it are that
person's employments (a rehire). An account links by email or alias, case- and
space-insensitively; a key that points at two people is *ambiguous* and never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .schema import normalize_emails

LINKED, UNLINKED, AMBIGUOUS = "linked", "none", "ambiguous"


@dataclass
class IdentityIndex:
    lookup: pd.Series            # normalised email or alias → person's primary email
    ambiguous: dict[str, list[str]]   # key → the primary emails it could mean
    person_ids: pd.Series        # primary email → person_id of the latest employment
    by_person_id: pd.Series      # person_id → primary email (the last link tried)

    @classmethod
    def from_people(cls, people: pd.DataFrame) -> "IdentityIndex":
        primary = normalize_emails(people["email"])
        pairs = [pd.DataFrame({"key": primary, "person": primary})]
        if "aliases" in people.columns:
            aliases = pd.DataFrame({"key": people["aliases"], "person": primary}).explode("key")
            aliases["key"] = normalize_emails(aliases["key"])
            pairs.append(aliases)
        keys = pd.concat(pairs, ignore_index=True).dropna().drop_duplicates()
        counts = keys.groupby("key")["person"].nunique()
        ambiguous_keys = set(counts[counts > 1].index)
        ambiguous = {k: sorted(g["person"].unique()) for k, g in
                     keys[keys["key"].isin(ambiguous_keys)].groupby("key")}
        unique = keys[~keys["key"].isin(ambiguous_keys)].drop_duplicates("key")
        latest = people.assign(_email=primary).sort_values("hired_on", na_position="first")
        person_ids = latest.drop_duplicates("_email", keep="last").set_index("_email")["person_id"]
        ids = pd.DataFrame({"id": people["person_id"].astype(object), "person": primary}) \
            .dropna().drop_duplicates()
        ids = ids[~ids["id"].duplicated(keep=False)]   # an id on two people links nobody
        return cls(unique.set_index("key")["person"], ambiguous, person_ids,
                   ids.set_index("id")["person"])

    def link(self, emails: pd.Series, employee_ids: pd.Series | None = None,
             aliases: pd.Series | None = None) -> pd.DataFrame:
        """For each account: ``person`` (primary email or None) and ``link`` status, by email
        (against HR emails and aliases), else by the account's own aliases, else by an employee
        id equal to an HR ``person_id``."""
        keys = normalize_emails(emails)
        person = keys.map(self.lookup).astype(object)
        ambiguous_alias = pd.Series(False, index=emails.index)
        if aliases is not None:
            by_alias = self._link_aliases(aliases)
            unresolved = person.isna() & ~keys.isin(set(self.ambiguous))
            ambiguous_alias = unresolved & by_alias.eq(AMBIGUOUS)
            person = person.where(~unresolved | ambiguous_alias, by_alias.where(
                by_alias.ne(AMBIGUOUS), None))
        if employee_ids is not None:
            by_id = employee_ids.astype(object).map(self.by_person_id)
            person = person.where(person.notna() | keys.isin(set(self.ambiguous)), by_id)
        status = pd.Series(UNLINKED, index=emails.index, dtype=object)
        status[person.notna()] = LINKED
        status[keys.isin(set(self.ambiguous)) | ambiguous_alias] = AMBIGUOUS
        return pd.DataFrame({"person": person.where(person.notna(), None), "link": status},
                            index=emails.index)

    def _link_aliases(self, aliases: pd.Series) -> pd.Series:
        """Per account: the one person its aliases point to, AMBIGUOUS for several, else None."""
        pairs = aliases.explode().dropna()
        if pairs.empty:
            return pd.Series(None, index=aliases.index, dtype=object)
        people = normalize_emails(pd.Series(pairs.to_numpy())).map(self.lookup)
        found = pd.DataFrame({"row": pairs.index, "person": people.to_numpy()}).dropna()
        counts = found.groupby("row")["person"].nunique()
        first = found.groupby("row")["person"].first()
        out = first.where(counts == 1, AMBIGUOUS)
        return out.reindex(aliases.index).astype(object)
