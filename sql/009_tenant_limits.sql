-- Per-tenant settings: the limits of a tenant's workspace (the files API,
-- docs/api.md#files).  A tenant is the `tenant` of its keys; it has no row
-- until an administrator sets one.  NULL: ccgate.conf's default
-- (workspace_max_bytes, workspace_max_files); 0: no limit.
CREATE TABLE IF NOT EXISTS tenant_limits (
    tenant              VARCHAR(64)  NOT NULL,
    workspace_max_bytes BIGINT       NULL,
    workspace_max_files BIGINT       NULL,
    updated_at          DATETIME     NOT NULL,
    PRIMARY KEY (tenant)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
