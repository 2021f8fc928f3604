-- One tenant for the PostgreSQL engine (README: Tenant isolation).
--
--   worker tenant-password acme      # prints: tenant_acme<TAB><password>
--   psql -v tenant_role=tenant_acme -v tenant_schema=tenant_acme -v tenant_password="$PW" \
--        -f deploy/sql/provision-tenant.sql
--
-- The names follow engines.<name>.role_template and .schema_template (both
-- `tenant_{tenant_id}` by default); the password is the one `worker tenant-password`
-- derives from engines.<name>.tenant_password_key. The tenant's runs log in as this role.
-- It is a member of no other role and owns the tenant's schema, so it reads the tenant's
-- data, creates and writes the tenant's destination tables, and has no privilege on any
-- other tenant's schema. Whatever loads the tenant's data grants it SELECT on those tables
-- (or creates them as this role).
CREATE ROLE :"tenant_role" LOGIN PASSWORD :'tenant_password';
CREATE SCHEMA :"tenant_schema" AUTHORIZATION :"tenant_role";
REVOKE ALL ON SCHEMA :"tenant_schema" FROM PUBLIC;
