-- The worker's own login role, once per database (README: Tenant isolation).
--
--   psql -v worker_role=sqo_worker -v worker_password="$PASSWORD" -f deploy/sql/worker-role.sql
--
-- It owns its run ledger's schema and nothing else: no tenant's data is readable by it (each
-- run logs in as its tenant's own role, provision-tenant.sql). Point ledger.url at it, and
-- engines.<name>.url too (the engine uses that login only to check that the server answers;
-- the runs take the host, port and database from it and log in as the tenant).
CREATE ROLE :"worker_role" LOGIN PASSWORD :'worker_password';
CREATE SCHEMA sqo_ledger AUTHORIZATION :"worker_role";
