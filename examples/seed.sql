-- Sample tenant data for running the controller and the worker against PostgreSQL, after
-- deploy/sql/provision-tenant.sql made each tenant's role and schema (scripts/run-local):
-- the tables are created as the tenant's role, so its runs can read them.
SET ROLE tenant_acme;
CREATE TABLE IF NOT EXISTS tenant_acme.sales (store text, amount numeric(12,2), ts timestamptz);
SET ROLE tenant_globex;
CREATE TABLE IF NOT EXISTS tenant_globex.sales (store text, amount numeric(12,2), ts timestamptz);
RESET ROLE;
-- One sale per store every second from a day ago to a day ahead, so every window has rows.
SET ROLE tenant_acme;
INSERT INTO tenant_acme.sales
  SELECT s, round((random() * 100)::numeric, 2), now() - make_interval(secs => g)
  FROM generate_series(-86400, 86400) g, unnest(ARRAY['north', 'south']) s;
SET ROLE tenant_globex;
INSERT INTO tenant_globex.sales
  SELECT s, round((random() * 50)::numeric, 2), now() - make_interval(secs => g)
  FROM generate_series(-86400, 86400, 2) g, unnest(ARRAY['berlin']) s;
RESET ROLE;
