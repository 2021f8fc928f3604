-- Local runs only (docker/compose.yaml, scripts/run-local): the tenants' login roles and
-- schemas, as deploy/sql/provision-tenant.sql makes them, with the passwords the worker
-- derives from the key below (engines.warehouse.tenant_password_key), computed here with
-- pgcrypto instead of `worker tenant-password`. The key is not a secret: local use only.
-- Runs as a superuser, before examples/seed.sql; creates only what is missing.
CREATE EXTENSION IF NOT EXISTS pgcrypto;
DO $$
DECLARE
  tenant text;
  role text;
  password text;
BEGIN
  FOREACH tenant IN ARRAY ARRAY['acme', 'globex'] LOOP
    role := 'tenant_' || tenant;
    password := rtrim(translate(encode(hmac(convert_to(E'sqo tenant login\n' || role, 'UTF8'),
                                            convert_to('local-tenant-password-key', 'UTF8'), 'sha256'),
                                       'base64'), '+/', '-_'), '=');
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role) THEN
      EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L', role, password);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = role) THEN
      EXECUTE format('CREATE SCHEMA %I AUTHORIZATION %I', role, role);
      EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', role);
    END IF;
  END LOOP;
END
$$;
