"""Which statements "auto" may let pass without a reset: only those that provably leave
nothing on a MySQL session (wsgi_db_pool._mysql_clean). A wrong "clean" leaks one
user's state to the next, so every way a statement can reach a routine is tried here;
a wrong "not clean" only costs a reset."""

from __future__ import annotations

import pytest

from wsgi_db_pool._mysql_clean import is_clean

CLEAN = [
    # Django's primary-key read, and the shapes the ORM sends most.
    "SELECT `app_item`.`id`, `app_item`.`name` FROM `app_item` WHERE `app_item`.`id` = 5 LIMIT 21",
    "SELECT COUNT(*) AS `__count` FROM `t` WHERE `t`.`a` IN (1, 2)",
    "SELECT (1) AS `a` FROM `t` WHERE `t`.`id` = 1 LIMIT 1",
    "SELECT EXISTS(SELECT 1 FROM t) AS `a`",
    "  select x from t where y in (select z from u)",
    "SELECT `t`.`a` IN (1) FROM t",
    "SELECT x FROM t WHERE a = 1 FOR UPDATE",
    "SELECT MAX(`t`.`a`), COALESCE(SUM(`t`.`b`), 0) FROM `t` GROUP BY `t`.`c`",
    "SELECT CONNECTION_ID(), DATABASE()",
    "SELECT `context`, `blocked`, `intonation` FROM t",  # words inside names
]

NOT_CLEAN = [
    # Routines: stored functions (any spelling), procedures.
    "SELECT f()",
    "SELECT f (1)",
    "SELECT `f`(1)",
    "SELECT test.f(1)",
    "SELECT test . f (1)",
    "SELECT `test`.`f`(1)",
    'SELECT "f"(1)',  # ANSI_QUOTES
    'SELECT "test"."f"(1)',
    "SELECT a.`b`(1)",
    "SELECT ƒ(1)",
    "SELECT f -- comment\n(1)",
    "SELECT COUNT (*) FROM t",  # with a blank, a name may be a stored function
    "SELECT COUNT/**/(*) FROM t",
    "SELECT /*! f() */ 1",  # versioned comments are executed
    # Variables, locks, sequences, found rows.
    "SELECT 1 INTO @x",
    "SELECT @x := 1",
    "SELECT @x",
    "SELECT GET_LOCK('a', 0)",
    "SELECT RELEASE_LOCK('a')",
    "SELECT LAST_INSERT_ID(5)",
    "SELECT NEXT VALUE FOR s",
    "SELECT NEXTVAL(s)",
    "SELECT SETVAL(s, 5)",
    "SELECT PREVIOUS VALUE FOR s",
    "SELECT SQL_CALC_FOUND_ROWS x FROM t",
    "SELECT x FROM t LOCK IN SHARE MODE",
    "SELECT x INTO OUTFILE '/tmp/x' FROM t",
    "SELECT x FROM t PROCEDURE ANALYSE()",
    # Not a single plain SELECT.
    "SELECT 1; SET @a = 1",
    "SET @a = 1",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "CALL p()",
    "INSERT INTO t (a) VALUES (1)",
    "DO 1",
    b"SELECT 1",
    None,
    # A value that looks like code costs a reset, never a leak.
    "SELECT 1 FROM t WHERE a = 'f('",
]


@pytest.mark.parametrize("sql", CLEAN)
def test_clean(sql: str) -> None:
    assert is_clean(sql)


@pytest.mark.parametrize("sql", NOT_CLEAN)
def test_not_clean(sql: object) -> None:
    assert not is_clean(sql)


def test_a_view_is_not_clean_and_a_longer_name_is() -> None:
    views = frozenset({"V", "SYS"})
    assert not is_clean("SELECT * FROM v", views)
    assert not is_clean("SELECT * FROM `V` WHERE 1", views)
    assert not is_clean("SELECT * FROM sys.x", views)  # another schema holding views
    assert is_clean("SELECT * FROM views_v, `system`", views)
