-- Sample tenant data for running the controller and the worker against PostgreSQL:
-- one schema per tenant (the worker's default schema_template is tenant_{tenant_id}).
CREATE SCHEMA IF NOT EXISTS tenant_acme;
CREATE SCHEMA IF NOT EXISTS tenant_globex;
CREATE TABLE IF NOT EXISTS tenant_acme.sales (store text, amount numeric(12,2), ts timestamptz);
CREATE TABLE IF NOT EXISTS tenant_globex.sales (store text, amount numeric(12,2), ts timestamptz);
-- One sale per store every second from a day ago to a day ahead, so every window has rows.
INSERT INTO tenant_acme.sales
  SELECT s, round((random() * 100)::numeric, 2), now() - make_interval(secs => g)
  FROM generate_series(-86400, 86400) g, unnest(ARRAY['north', 'south']) s;
INSERT INTO tenant_globex.sales
  SELECT s, round((random() * 50)::numeric, 2), now() - make_interval(secs => g)
  FROM generate_series(-86400, 86400, 2) g, unnest(ARRAY['berlin']) s;
