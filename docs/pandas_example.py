#!/usr/bin/env python3
"""Read a month of Wattline's per-minute data with pandas.read_sql, from either backend.

  python3 docs/pandas_example.py --sqlite wattline-data/wattline.db --device main --month 2026-01
  python3 docs/pandas_example.py --postgres postgresql+psycopg://postgres@127.0.0.1/wattline --device main --month 2026-01

Needs: pip install pandas sqlalchemy "psycopg[binary]" (the last two for PostgreSQL only).
"""
import argparse
import sqlite3
from datetime import datetime, timezone

import pandas as pd


def month_bounds(month):
    start = datetime.strptime(month, "%Y-%m").replace(tzinfo=timezone.utc)
    end = start.replace(year=start.year + (start.month == 12), month=start.month % 12 + 1)
    return start, end


def from_sqlite(path, device, start, end):
    # Read-only: never lock the running server out.
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    df = pd.read_sql(
        """SELECT s.device_id, s.channel, r.bucket, r.power_avg, r.power_min, r.power_max,
                  r.voltage_avg, r.energy_import_kwh
           FROM rollup_1m r JOIN series s ON s.id = r.series_id
           WHERE s.device_id = ? AND r.bucket >= ? AND r.bucket < ?
           ORDER BY s.channel, r.bucket""",
        con,
        params=(device, int(start.timestamp() * 1000), int(end.timestamp() * 1000)),
    )
    df["time"] = pd.to_datetime(df["bucket"], unit="ms", utc=True)
    return df, None


def from_postgres(url, device, start, end):
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    params = {"d": device, "a": start, "b": end}
    minute = pd.read_sql(
        sqlalchemy.text(
            """SELECT s.device_id, s.channel, r.bucket AS time, r.power_avg, r.power_min, r.power_max,
                      r.voltage_avg, r.energy_import_kwh
               FROM rollup_1m r JOIN series s ON s.id = r.series_id
               WHERE s.device_id = :d AND r.bucket >= :a AND r.bucket < :b
               ORDER BY s.channel, r.bucket"""
        ),
        engine,
        params=params,
    )
    raw = pd.read_sql(
        sqlalchemy.text(
            """SELECT s.channel, r.ts, r.voltage, r.current, r.power, r.energy
               FROM readings r JOIN series s ON s.id = r.series_id
               WHERE s.device_id = :d AND r.ts >= :a AND r.ts < :b
               ORDER BY s.channel, r.ts"""
        ),
        engine,
        params=params,
    )
    return minute, raw


def main():
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--sqlite", help="path of wattline.db")
    src.add_argument("--postgres", help="SQLAlchemy URL, e.g. postgresql+psycopg://postgres@127.0.0.1/wattline")
    ap.add_argument("--device", required=True)
    ap.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    a = ap.parse_args()
    start, end = month_bounds(a.month)
    if a.sqlite:
        minute, raw = from_sqlite(a.sqlite, a.device, start, end)
    else:
        minute, raw = from_postgres(a.postgres, a.device, start, end)
    print(f"per-minute rows: {len(minute)}")
    print(minute.head().to_string())
    if len(minute):
        print(f"energy in the month: {minute['energy_import_kwh'].sum():.3f} kWh, "
              f"mean power {minute['power_avg'].mean():.1f} W")
    if raw is not None:
        print(f"raw readings: {len(raw)}")
        print(raw.head().to_string())


if __name__ == "__main__":
    main()
