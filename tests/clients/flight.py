"""Arrow Flight SQL as an analytics client runs it against `semflow serve --flight-addr`: the
ADBC Flight SQL driver (adbc-driver-flightsql) through its DB-API, results as pyarrow tables.
Prints one JSON object for tests/flight.rs to check against the engine's own answers.

usage: flight.py URI TOKEN [CA_PEM_FILE]
"""

import json
import sys

import adbc_driver_flightsql as fs
import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa

URI, TOKEN = sys.argv[1], sys.argv[2]
CA = open(sys.argv[3]).read() if len(sys.argv) > 3 else None
DOCS = (
    "(VALUES (0, 'Graphene is a single layer of carbon atoms.'), "
    "(1, 'The capital of France is Paris.'), (2, 'Copper conducts heat.')) AS d(id, t)"
)


def connect(**options):
    if CA:
        options[fs.DatabaseOptions.TLS_ROOT_CERTS.value] = CA
    return flight_sql.connect(URI, db_kwargs=options, autocommit=True)


def with_bearer():
    return connect(**{fs.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {TOKEN}"})


def error_of(open_connection, sql):
    """The client's error text for connecting and running `sql`, or None when it ran."""
    try:
        with open_connection() as conn, conn.cursor() as cur:
            cur.execute(sql)
            cur.fetchall()
        return None
    except Exception as e:  # the driver's own exception types vary by version
        return f"{type(e).__name__}: {e}"


out = {}
with with_bearer() as conn, conn.cursor() as cur:
    cur.execute(f"SELECT id, embed(t) AS v FROM {DOCS} ORDER BY id")
    table = cur.fetch_arrow_table()
    vectors = table.schema.field("v").type
    out["vector_type"] = str(vectors)
    out["fixed_size"] = pa.types.is_fixed_size_list(vectors)
    out["list_size"] = vectors.list_size if out["fixed_size"] else None
    out["docs"] = table.column("v").to_pylist()

    # Prepared statements with bound parameters ($1 = the first).
    cur.execute("SELECT embed($1) AS v", parameters=("The capital of France is Paris.",))
    out["param_vector"] = cur.fetch_arrow_table().column("v").to_pylist()[0]
    cur.execute("SELECT $1 * 2 AS n, upper($2) AS s", parameters=(21, "ok"))
    out["two_params"] = [list(r) for r in cur.fetchall()]

    # DDL and DML; executemany binds several rows (one execution each).
    cur.execute("CREATE TABLE flight_notes (id BIGINT, body TEXT)")
    cur.fetchall()
    cur.execute("INSERT INTO flight_notes VALUES (1, 'graphene sheets'), (2, 'paris')")
    out["inserted"] = [list(r) for r in cur.fetchall()]
    cur.executemany("INSERT INTO flight_notes VALUES ($1, $2)", [(3, "copper"), (4, "heat")])
    out["executemany_rowcount"] = cur.rowcount
    cur.execute("SELECT id, body FROM flight_notes ORDER BY id")
    out["notes"] = [list(r) for r in cur.fetchall()]
    out["notes_schema"] = conn.adbc_get_table_schema("flight_notes").names
    out["vendor"] = conn.adbc_get_info().get("vendor_name")

    # SET applies to its own request only.
    cur.execute("SET datafusion.execution.batch_size = 7; SHOW datafusion.execution.batch_size")
    out["set_here"] = [list(r) for r in cur.fetchall()]
    cur.execute("SHOW datafusion.execution.batch_size")
    out["set_elsewhere"] = [list(r) for r in cur.fetchall()]

out["errors"] = {
    "missing_table": error_of(with_bearer, "SELECT * FROM nope"),
    "two_queries": error_of(with_bearer, "SELECT 1; SELECT 2"),
    "no_credentials": error_of(connect, "SELECT 1"),
    "wrong_password": error_of(lambda: connect(username="reader", password="wrong"), "SELECT 1"),
}

# Username/password: the handshake trades Basic credentials (the token as password) for the
# bearer header.
with connect(username="reader", password=TOKEN) as conn, conn.cursor() as cur:
    cur.execute("SELECT 40 + 2 AS answer")
    out["basic_login"] = cur.fetchall()[0][0]

print(json.dumps(out))
