"""The statement check: every SQL statement the test suite sent, parsed with PostgreSQL's own parser (pglast),
against the rules Citus enforces on distributed tables (docs/scaling.md, "The rules the check enforces").

Where the statements come from: the embedded PostgreSQL of the tests logs every statement (`log_statement=all`
into a jsonlog, devstack.servers.STATEMENT_LOG_OPTIONS), so the web and worker processes of the end-to-end stacks are
recorded as well as the test process. `make test` checks the log of its run when the session ends
(tests/conftest.py); on any log:

    .venv/bin/python -m tests.support.citus_rules .data/test/postgres/log/*.json

What is not checked, by a rule:
- migrations: connections whose application_name is `lad-migrations` (migrations/env.py sets it);
- the suite's own fixture and assertion SQL: statements sent from code under tests/ carry the comment
  `/* lad-test */` (tests/conftest.py marks them) — SQL that billing_core, web or tasks send is checked,
  whoever called it;
- utility statements (DDL, SET, transaction control): only SELECT, INSERT, UPDATE, DELETE, COPY (query) are.

Table kinds come from billing_core.sharding.TABLE_KINDS. A relation that is not there (a temporary table, a
function, a VALUES list) is a local relation.

The trigger rule reads the database's catalog (`trigger_violations`), not the log.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pglast import ast, parse_plpgsql, parse_sql
from pglast.enums import JoinType

from billing_core.sharding import distributed_tables, tenant_tables

TEST_MARK = "/* lad-test */"
MIGRATIONS_APPLICATION = "lad-migrations"

# --- the rules ---------------------------------------------------------------------------------------
RULES = {
    # A statement on a tenant table without `tenant_id = <constant or parameter>` runs on every shard.
    # Citus allows it for plain reads, but a money path must never fan out, and with row locks it fails:
    # "could not run distributed query with FOR UPDATE/SHARE commands" (see cross-tenant-lock).
    "tenant-filter": "a tenant table is read or written without tenant_id = <constant or parameter>",
    # "could not run distributed query with FOR UPDATE/SHARE commands"
    "cross-tenant-lock": "FOR UPDATE/SHARE over tenant rows not pinned to one tenant",
    # "the query contains a join that requires repartitioning" /
    # "complex joins are only supported when all distributed tables are co-located and joined on their
    # distribution columns"
    "tenant-join": "two tenant tables joined (or correlated) without equality on tenant_id",
    # "complex joins are only supported when all distributed tables are co-located and joined on their
    # distribution columns" — an outer join whose preserved side has no tenant table (a constant subquery,
    # VALUES, a function, a reference or local table) and whose other side has one
    "recurring-outer-join": "an outer join from a relation without a tenant table to a tenant table",
    # "non-IMMUTABLE functions are not allowed in CASE or COALESCE statements"
    "mutable-in-case": "a non-immutable function inside CASE or COALESCE of an INSERT/UPDATE/DELETE on a "
                       "distributed table",
    # "functions used in the DO UPDATE SET clause of INSERTs on distributed tables must be marked IMMUTABLE"
    "mutable-in-upsert": "a non-immutable function in ON CONFLICT … DO UPDATE of a distributed table",
    # "subqueries are not supported within INSERT queries"
    "subquery-in-values": "a subquery inside INSERT … VALUES on a distributed table",
    # "cannot execute a distributed query from a query on a shard" (a trigger fires on the shard, where
    # another distributed table is not there to write or read); "cannot distribute relation … because it
    # has triggers" without citus.enable_unsafe_triggers
    "trigger-touches-other-table": "a trigger on a distributed table that reads or writes another table",
}

# Operator-wide scans across tenants that take no row locks: a statement carrying the comment
# `/* citus:operator-scan <name> */` with a name below is exempt from tenant-filter (never from the
# other rules: under Citus it runs on every shard in parallel, joined on tenant_id).
OPERATOR_SCANS = {
    "pending-candidates": "the pending sweep: tenants with pending events past their retry age (no lock; each "
                          "tenant's events are then claimed by a tenant-filtered statement)",
    "alert-candidates": "the balance-alert scan: tenants whose alert state is due (then claimed per tenant)",
    "auto-topup-candidates": "the auto top-up scans: tenants whose settings or attempts are due (then per tenant)",
    "allocation-candidates": "the allocation job: allocations not yet granted this period (each then granted in a "
                             "transaction of its tenant's own)",
    "expiry-candidates": "the expiry job and the quote purge: tenants with holds, grants or quotes past their expiry",
    "reconciliation": "the reconciliation and the ledger verification over every tenant",
    "rollup-tenants": "the monthly rollup: the tenants with ledger activity in the period",
    "operator-reports": "operator lists and reports over every tenant (reads only)",
    "export": "operator exports over every tenant (reads only)",
    "rerate-candidates": "a re-rate run: the tenants whose events a catalog correction touches",
    "stripe-payment": "the grant a Stripe payment created, found by its reference in whichever tenant it was "
                      "credited to (a refund or dispute may not name the tenant; the payment's advisory lock "
                      "is held, no row lock)",
}
# Triggers on distributed tables that read (never write) another table, kept on purpose. Under Citus a
# trigger runs on the shard; a read of another distributed table from there needs
# citus.allow_nested_distributed_execution or a rewrite: docs/scaling.md lists this as unconfirmed.
TRIGGER_READS = {
    "invoice_lines_no_late_lines": "reads invoices (same tenant, colocated) to refuse lines added to a finalized "
                                   "invoice after its transaction; nothing else guards that",
}
_SCAN_MARK = re.compile(r"/\*\s*citus:operator-scan\s+([a-z0-9-]+)\s*\*/")

# Functions that are not IMMUTABLE (every overload, or the ones the service uses); SQLValueFunctions
# (CURRENT_TIMESTAMP, CURRENT_DATE, LOCALTIMESTAMP, CURRENT_USER…) are all STABLE and always count.
# Not detected: STABLE operators and casts (timestamptz + interval, text::timestamptz) — a limit of a check
# without the catalog.
MUTABLE_FUNCTIONS = frozenset({
    "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "timeofday", "random",
    "gen_random_uuid", "uuid_generate_v4", "nextval", "currval", "lastval", "setval", "txid_current",
    "pg_current_xact_id", "current_setting", "age", "to_char", "date_trunc", "timezone", "random_normal",
})


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str
    statement: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.detail}: {_short(self.statement)}"


def _short(sql: str, width: int = 400) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[:width] + " …"


# --- analysis of one statement -------------------------------------------------------------------------

@dataclass(eq=False)
class _Rel:
    name: str | None  # a table's name; None for a subquery, CTE reference, function or VALUES
    alias: str
    tenant: bool  # a tenant table (or a derived relation over one)
    scope: _Scope
    locked: bool = False

    @property
    def label(self) -> str:
        if self.name is None:
            return f"({self.alias})"
        return self.name if self.alias == self.name else f"{self.name} {self.alias}"


@dataclass(eq=False)
class _Scope:
    parent: _Scope | None
    rels: list[_Rel] = field(default_factory=list)
    ctes: dict[str, _Derived] = field(default_factory=dict)

    def find_cte(self, name: str) -> _Derived | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.ctes:
                return scope.ctes[name]
            scope = scope.parent
        return None


@dataclass(eq=False)
class _Derived:
    tenant_nodes: list[Any]  # what its `tenant_id` output column is equal to
    has_tenant: bool


class _Analysis:
    def __init__(self, sql: str, tenants: frozenset[str], distributed: frozenset[str]):
        self.sql, self.tenants, self.distributed = sql, tenants, distributed
        self.parent: dict[Any, Any] = {}
        self.rels: list[_Rel] = []
        self.violations: list[Violation] = []
        self.locking = False

    # union-find over tenant_id nodes: ("rel", id) | ("const", value) | ("param", n)
    def _find(self, node: Any) -> Any:
        self.parent.setdefault(node, node)
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def _union(self, a: Any, b: Any) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self.parent[ra] = rb

    def pinned(self, rel: _Rel) -> bool:
        root = self._find(("rel", id(rel)))
        return any(self._find(n) == root for n in list(self.parent) if n[0] in ("const", "param"))

    def same_tenant(self, a: _Rel, b: _Rel) -> bool:
        return self._find(("rel", id(a))) == self._find(("rel", id(b)))

    def fail(self, rule: str, detail: str) -> None:
        self.violations.append(Violation(rule, detail, self.sql))

    # --- statements ---
    def statement(self, node: Any, scope: _Scope) -> None:
        if isinstance(node, ast.SelectStmt):
            self.select(node, scope)
        elif isinstance(node, ast.InsertStmt):
            self.insert(node, scope)
        elif isinstance(node, ast.UpdateStmt):
            self.update(node, scope)
        elif isinstance(node, ast.DeleteStmt):
            self.delete(node, scope)
        elif isinstance(node, ast.CopyStmt) and node.query is not None:
            self.statement(node.query, scope)
        elif isinstance(node, ast.ExplainStmt):
            self.statement(node.query, scope)

    def with_clause(self, clause: Any, scope: _Scope) -> None:
        if clause is None:
            return
        for cte in clause.ctes or ():
            inner = _Scope(scope)
            self.statement(cte.ctequery, inner)
            scope.ctes[cte.ctename] = self.derived_of(cte.ctequery, inner)

    def derived_of(self, query: Any, inner: _Scope) -> _Derived:
        """What a subquery's `tenant_id` output is equal to (its target list names tenant_id)."""
        nodes: list[Any] = []
        has_tenant = any(r.tenant for r in inner.rels)
        targets = getattr(query, "targetList", None) or _returning(query)
        if isinstance(query, ast.SelectStmt) and query.op and query.larg is not None:
            targets = query.larg.targetList or ()
        for target in targets:
            value = target.val
            name = target.name or (value.fields[-1].sval if isinstance(value, ast.ColumnRef)
                                   and isinstance(value.fields[-1], ast.String) else None)
            if isinstance(value, ast.ColumnRef) and isinstance(value.fields[-1], ast.A_Star):
                nodes.extend(("rel", id(r)) for r in inner.rels if r.tenant)
            elif name == "tenant_id":
                node = self.value_node(value, inner)
                if node is not None:
                    nodes.append(node)
        return _Derived(nodes, has_tenant)

    def select(self, node: ast.SelectStmt, scope: _Scope) -> None:
        if node.op and node.op != 0:  # UNION / INTERSECT / EXCEPT: each branch on its own
            self.with_clause(node.withClause, scope)
            self.select(node.larg, _Scope(scope))
            self.select(node.rarg, _Scope(scope))
            return
        self.with_clause(node.withClause, scope)
        if node.valuesLists:
            for row in node.valuesLists:
                for value in row:
                    self.expression(value, scope)
            return
        for item in node.fromClause or ():
            self.from_item(item, scope)
        self.condition(node.whereClause, scope)
        if node.lockingClause:
            self.locking = True
            for rel in scope.rels:
                rel.locked = True
        for target in node.targetList or ():
            self.expression(target.val, scope)
        self.expression(node.havingClause, scope)
        for item in node.groupClause or ():
            self.expression(item, scope)
        for item in node.sortClause or ():
            self.expression(item.node, scope)

    def insert(self, node: ast.InsertStmt, scope: _Scope) -> None:
        self.with_clause(node.withClause, scope)
        table = node.relation.relname
        distributed = table in self.distributed and node.relation.relpersistence != "t"
        select = node.selectStmt
        if select is not None:
            if distributed and isinstance(select, ast.SelectStmt) and select.valuesLists:
                if any(_contains(value, ast.SubLink) for row in select.valuesLists for value in row):
                    self.fail("subquery-in-values", f"INSERT INTO {table} … VALUES with a subquery")
            self.statement(select, _Scope(scope))
        conflict = node.onConflictClause
        if distributed and conflict is not None and conflict.targetList:
            for target in conflict.targetList:
                function = _mutable_function(target.val)
                if function:
                    self.fail("mutable-in-upsert", f"{function} in ON CONFLICT DO UPDATE SET {target.name} "
                                                   f"of {table}")
            if select is not None and _mutable_in_case(select):
                self.fail("mutable-in-case", f"{_mutable_in_case(select)} inside CASE/COALESCE in INSERT INTO "
                                             f"{table}")

    def update(self, node: ast.UpdateStmt, scope: _Scope) -> None:
        self.with_clause(node.withClause, scope)
        target = self.table_rel(node.relation, scope)
        for item in node.fromClause or ():
            self.from_item(item, scope)
        self.condition(node.whereClause, scope)
        for item in node.targetList or ():
            self.expression(item.val, scope)
        for item in _returning(node):
            self.expression(item.val, scope)
        if node.relation.relname in self.distributed and target is not None:
            function = next(filter(None, (_mutable_in_case(item.val) for item in node.targetList or ())), None) \
                or _mutable_in_case(node.whereClause)
            if function:
                self.fail("mutable-in-case", f"{function} inside CASE/COALESCE in UPDATE {node.relation.relname}")

    def delete(self, node: ast.DeleteStmt, scope: _Scope) -> None:
        self.with_clause(node.withClause, scope)
        self.table_rel(node.relation, scope)
        for item in node.usingClause or ():
            self.from_item(item, scope)
        self.condition(node.whereClause, scope)
        if node.relation.relname in self.distributed and _mutable_in_case(node.whereClause):
            self.fail("mutable-in-case", f"{_mutable_in_case(node.whereClause)} inside CASE/COALESCE in DELETE "
                                         f"FROM {node.relation.relname}")

    # --- FROM ---
    def table_rel(self, var: ast.RangeVar, scope: _Scope) -> _Rel | None:
        name = var.relname
        alias = var.alias.aliasname if var.alias is not None else name
        cte = scope.find_cte(name) if var.schemaname is None else None
        if cte is not None:
            rel = _Rel(None, alias, cte.has_tenant, scope)
            for node in cte.tenant_nodes:
                self._union(("rel", id(rel)), node)
        else:
            tenant = name in self.tenants and var.schemaname in (None, "public") and var.relpersistence != "t"
            rel = _Rel(name, alias, tenant, scope)
        scope.rels.append(rel)
        self.rels.append(rel)
        return rel

    def from_item(self, item: Any, scope: _Scope) -> list[_Rel]:
        """The relations an item of FROM brings into scope."""
        before = len(scope.rels)
        if isinstance(item, ast.RangeVar):
            self.table_rel(item, scope)
        elif isinstance(item, ast.JoinExpr):
            left = self.from_item(item.larg, scope)
            right = self.from_item(item.rarg, scope)
            if item.jointype in (JoinType.JOIN_LEFT, JoinType.JOIN_RIGHT, JoinType.JOIN_FULL):
                preserved, other = (left, right) if item.jointype == JoinType.JOIN_LEFT else (right, left)
                if item.jointype == JoinType.JOIN_FULL:
                    preserved, other = (left, right) if not any(r.tenant for r in left) else (right, left)
                if not any(r.tenant for r in preserved) and any(r.tenant for r in other):
                    self.fail("recurring-outer-join", f"{item.jointype.name} from "
                              f"{', '.join(r.label for r in preserved) or 'a relation'} to "
                              f"{', '.join(r.label for r in other if r.tenant)}")
            self.condition(item.quals, scope)
            for column in item.usingClause or ():
                if column.sval == "tenant_id":
                    tenants = [r for r in [*left, *right] if r.tenant]
                    for a, b in zip(tenants, tenants[1:], strict=False):
                        self._union(("rel", id(a)), ("rel", id(b)))
        elif isinstance(item, ast.RangeSubselect):
            inner = _Scope(scope)
            self.statement(item.subquery, inner)
            derived = self.derived_of(item.subquery, inner)
            alias = item.alias.aliasname if item.alias is not None else "?"
            rel = _Rel(None, alias, derived.has_tenant, scope)
            for node in derived.tenant_nodes:
                self._union(("rel", id(rel)), node)
            scope.rels.append(rel)
            self.rels.append(rel)
        elif isinstance(item, ast.RangeFunction):
            alias = item.alias.aliasname if item.alias is not None else "?"
            rel = _Rel(None, alias, False, scope)
            scope.rels.append(rel)
            for function in item.functions or ():
                for part in function:
                    self.expression(part, scope)
        return scope.rels[before:]

    # --- expressions ---
    def condition(self, node: Any, scope: _Scope) -> None:
        """The AND-ed conjuncts of a WHERE or ON: equalities on tenant_id join classes."""
        if node is None:
            return
        for conjunct in _conjuncts(node):
            if isinstance(conjunct, ast.A_Expr) and _is_equality(conjunct):
                left = self.value_node(conjunct.lexpr, scope)
                right = self.value_node(_single(conjunct.rexpr), scope)
                if left is not None and right is not None and (left[0] == "rel" or right[0] == "rel"):
                    self._union(left, right)
            self.expression(conjunct, scope)

    def value_node(self, value: Any, scope: _Scope) -> Any:
        while isinstance(value, ast.TypeCast):
            value = value.arg
        if isinstance(value, ast.A_Const):
            return None if value.isnull else ("const", repr(value.val))
        if isinstance(value, ast.ParamRef):
            return ("param", value.number)
        if isinstance(value, ast.ColumnRef):
            rel = self.resolve_tenant_id(value, scope)
            return ("rel", id(rel)) if rel is not None else None
        return None

    def resolve_tenant_id(self, ref: ast.ColumnRef, scope: _Scope) -> _Rel | None:
        names = [f.sval for f in ref.fields if isinstance(f, ast.String)]
        if not names or names[-1] != "tenant_id":
            return None
        qualifier = names[-2] if len(names) >= 2 else None
        current: _Scope | None = scope
        while current is not None:
            if qualifier is not None:
                for rel in current.rels:
                    if rel.alias == qualifier:
                        return rel
            else:
                tenant = [r for r in current.rels if r.tenant]
                if len(tenant) >= 1:
                    return tenant[0]
                if len(current.rels) == 1:
                    return current.rels[0]
            current = current.parent
        return None

    def expression(self, node: Any, scope: _Scope) -> None:
        """Subqueries inside an expression: analysed in a scope under this one (correlation)."""
        if node is None:
            return
        for sub in _sublinks(node):
            inner = _Scope(scope)
            self.statement(sub.subselect, inner)
            if sub.testexpr is not None:
                self.expression(sub.testexpr, scope)

    # --- the verdict ---
    def verdict(self, operator_scan: str | None) -> list[Violation]:
        tenant_rels = [r for r in self.rels if r.tenant and r.name is not None]
        for rel in tenant_rels:
            if self.pinned(rel):
                continue
            if rel.locked:
                self.fail("cross-tenant-lock", f"{rel.label} is locked FOR UPDATE/SHARE without tenant_id = …")
            elif operator_scan is None:
                self.fail("tenant-filter", f"{rel.label} without tenant_id = <constant or parameter>")
        for i, a in enumerate(tenant_rels):
            for b in tenant_rels[i + 1:]:
                if _related(a.scope, b.scope) and not self.same_tenant(a, b):
                    self.fail("tenant-join", f"{a.label} and {b.label} without equality on tenant_id")
        return self.violations


def _related(a: _Scope, b: _Scope) -> bool:
    """Scopes in one query level, or one nested in the other (a correlated subquery)."""
    def ancestors(s: _Scope | None) -> list[_Scope]:
        out = []
        while s is not None:
            out.append(s)
            s = s.parent
        return out
    return a in ancestors(b) or b in ancestors(a)


def _returning(node: Any) -> tuple:
    """RETURNING targets (pglast 8 keeps them under returningClause)."""
    clause = getattr(node, "returningClause", None)
    if clause is not None:
        return clause.exprs or ()
    return getattr(node, "returningList", None) or ()


def _conjuncts(node: Any) -> Iterator[Any]:
    if isinstance(node, ast.BoolExpr) and node.boolop == 0:  # AND
        for arg in node.args:
            yield from _conjuncts(arg)
    else:
        yield node


def _is_equality(node: ast.A_Expr) -> bool:
    if node.kind == 0 and node.name and node.name[-1].sval == "=":  # AEXPR_OP
        return True
    # tenant_id IN (:one) is an equality too
    return node.kind == 6 and node.name[-1].sval == "=" and isinstance(node.rexpr, tuple) and len(node.rexpr) == 1


def _single(value: Any) -> Any:
    return value[0] if isinstance(value, tuple) and len(value) == 1 else value


def _walk(node: Any) -> Iterator[Any]:
    if isinstance(node, tuple | list):
        for item in node:
            yield from _walk(item)
    elif isinstance(node, ast.Node):
        yield node
        for name in node:
            yield from _walk(getattr(node, name))


def _sublinks(node: Any) -> Iterator[ast.SubLink]:
    """The outermost subqueries of an expression (not those inside another subquery)."""
    if isinstance(node, tuple | list):
        for item in node:
            yield from _sublinks(item)
    elif isinstance(node, ast.SubLink):
        yield node
    elif isinstance(node, ast.Node) and not isinstance(node, ast.SelectStmt | ast.RangeSubselect):
        for name in node:
            yield from _sublinks(getattr(node, name))


def _contains(node: Any, kind: type) -> bool:
    return any(isinstance(n, kind) for n in _walk(node))


def _mutable_function(node: Any) -> str | None:
    for n in _walk(node):
        if isinstance(n, ast.SQLValueFunction):
            return n.op.name.removeprefix("SVFOP_").lower()
        if isinstance(n, ast.FuncCall) and n.funcname[-1].sval in MUTABLE_FUNCTIONS:
            return f"{n.funcname[-1].sval}()"
    return None


def _mutable_in_case(node: Any) -> str | None:
    for n in _walk(node):
        if isinstance(n, ast.CaseExpr | ast.CoalesceExpr):
            function = _mutable_function(n)
            if function:
                return function
    return None


def check_statement(sql: str, *, tenants: frozenset[str] | None = None,
                    distributed: frozenset[str] | None = None) -> list[Violation]:
    """The rules a statement (or several, separated by ;) breaks; [] when it keeps them all."""
    tenants = tenant_tables() if tenants is None else tenants
    distributed = distributed_tables() if distributed is None else distributed
    mark = _SCAN_MARK.search(sql)
    operator_scan = mark.group(1) if mark else None
    found: list[Violation] = []
    if operator_scan is not None and operator_scan not in OPERATOR_SCANS:
        found.append(Violation("tenant-filter", f"unknown operator scan {operator_scan!r}", sql))
    for raw in parse_sql(sql):
        analysis = _Analysis(sql, tenants, distributed)
        analysis.statement(raw.stmt, _Scope(None))
        found.extend(analysis.verdict(operator_scan))
    return found


# --- triggers (from the catalog) -------------------------------------------------------------------------

TRIGGERS_SQL = """
    SELECT t.tgrelid::regclass::text AS table_name, t.tgname, p.proname, p.prosrc, l.lanname
    FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_language l ON l.oid = p.prolang
    WHERE NOT t.tgisinternal
"""


def trigger_violations(triggers: Iterable[tuple[str, str, str, str, str]],
                       distributed: frozenset[str] | None = None) -> list[Violation]:
    """(table, trigger, function, source, language) rows of TRIGGERS_SQL: a trigger on a distributed table
    whose function reads or writes any table other than its own (an append-only trigger that only RAISEs
    on its own table passes). Dynamic SQL (EXECUTE) counts as touching another table."""
    distributed = distributed_tables() if distributed is None else distributed
    found = []
    for table, trigger, function, source, language in triggers:
        if table not in distributed:
            continue
        where = f"trigger {trigger} on {table} ({function})"
        if language != "plpgsql":
            found.append(Violation("trigger-touches-other-table", f"{where}: a {language} function", source))
            continue
        body = f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $lad${source}$lad$"
        for query, dynamic in _plpgsql_queries(parse_plpgsql(body)):
            if dynamic:
                found.append(Violation("trigger-touches-other-table", f"{where}: dynamic SQL", query))
                continue
            try:
                statements = parse_sql(query)
            except Exception:  # an expression such as `NULL` or `NEW.x IS NULL`, no table in it
                continue
            touched = {n.relname for s in statements for n in _walk(s.stmt) if isinstance(n, ast.RangeVar)}
            others = sorted(touched - {table, "new_lines", "new_table", "old_table"})
            writes = any(isinstance(s.stmt, ast.InsertStmt | ast.UpdateStmt | ast.DeleteStmt) for s in statements)
            if others and not writes and trigger in TRIGGER_READS:
                continue
            if others:
                found.append(Violation("trigger-touches-other-table", f"{where} touches {', '.join(others)}",
                                       query))
    return found


def _plpgsql_queries(tree: Any) -> Iterator[tuple[str, bool]]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "PLpgSQL_stmt_dynexecute":
                yield (json.dumps(value)[:200], True)
            elif key == "PLpgSQL_expr" and isinstance(value, dict) and "query" in value:
                yield (value["query"], False)
            else:
                yield from _plpgsql_queries(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _plpgsql_queries(item)


# --- the log -------------------------------------------------------------------------------------------

_STATEMENT_PREFIX = re.compile(r"^(?:statement|execute [^:]*): ", re.S)
_CHECKED = re.compile(r"^\s*(?:/\*.*?\*/\s*)*(?:WITH|SELECT|INSERT|UPDATE|DELETE|COPY|\()", re.I | re.S)


@dataclass
class LogStatements:
    """Statements of jsonlog files (new lines only, from the offsets given), deduplicated."""
    statements: dict[str, int] = field(default_factory=dict)  # statement → times seen
    skipped: int = 0

    def read(self, path: Path, offset: int = 0) -> None:
        with path.open("rb") as handle:
            handle.seek(offset)
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                self.add(record)

    def add(self, record: dict[str, Any]) -> None:
        message = record.get("message", "")
        match = _STATEMENT_PREFIX.match(message)
        if not match:
            return
        sql = message[match.end():]
        if record.get("application_name") == MIGRATIONS_APPLICATION or TEST_MARK in sql \
                or not _CHECKED.match(sql):
            self.skipped += 1
            return
        self.statements[sql] = self.statements.get(sql, 0) + 1


def check_log(statements: Iterable[str]) -> list[Violation]:
    """Every violation of the statements; statements that differ only in their literals are checked once."""
    found: list[Violation] = []
    seen: set[str] = set()
    for sql in statements:
        shape = _shape(sql)
        if shape in seen:
            continue
        seen.add(shape)
        try:
            found.extend(check_statement(sql))
        except Exception as exc:  # pglast.parser.ParseError: a statement PostgreSQL rejected anyway
            if "syntax error" not in str(exc):
                found.append(Violation("unparsed", f"{type(exc).__name__}: {exc}", sql))
    return found


_LITERAL = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
_ARRAY = re.compile(r"ARRAY\[[^\[\]]*\]")


def _shape(sql: str) -> str:
    """The statement with its literals numbered by first appearance: same shape, same verdict."""
    numbering: dict[str, str] = {}

    def number(match: re.Match[str]) -> str:
        return numbering.setdefault(match.group(0), f"'${len(numbering)}'")
    return _NUMBER.sub("0", _ARRAY.sub("ARRAY[]", _LITERAL.sub(number, sql)))


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m tests.support.citus_rules LOG.json [...]", file=sys.stderr)
        return 2
    log = LogStatements()
    for name in argv:
        log.read(Path(name))
    violations = check_log(log.statements)
    for violation in violations:
        print(violation)
    print(f"{len(log.statements)} distinct statements checked, {log.skipped} skipped (migrations, tests' own, "
          f"utility), {len(violations)} violations", file=sys.stderr)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
