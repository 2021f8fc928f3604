-- Sample data of one tenant in the standalone mode (its own SQLite file). Timestamps are
-- RFC 3339 UTC text with milliseconds, the format the engine binds @window_start and
-- @window_end in, so comparisons are plain text comparisons.
CREATE TABLE sales (store TEXT NOT NULL, amount REAL NOT NULL, ts TEXT NOT NULL);
CREATE TABLE events (kind TEXT NOT NULL, ts TEXT NOT NULL);
CREATE INDEX sales_ts ON sales (ts);
CREATE INDEX events_ts ON events (ts);
-- A sale every 10 s and an event every 5 s, from a day ago to two days ahead.
WITH RECURSIVE g(n) AS (SELECT -86400 UNION ALL SELECT n + 10 FROM g WHERE n < 172800)
INSERT INTO sales
SELECT CASE abs(random()) % 3 WHEN 0 THEN 'north' WHEN 1 THEN 'south' ELSE 'online' END,
       round((abs(random()) % 10000) / 100.0, 2),
       strftime('%Y-%m-%dT%H:%M:%fZ', 'now', n || ' seconds')
FROM g;
WITH RECURSIVE g(n) AS (SELECT -86400 UNION ALL SELECT n + 5 FROM g WHERE n < 172800)
INSERT INTO events
SELECT CASE WHEN abs(random()) % 20 = 0 THEN 'error' ELSE 'ok' END,
       strftime('%Y-%m-%dT%H:%M:%fZ', 'now', n || ' seconds')
FROM g;
