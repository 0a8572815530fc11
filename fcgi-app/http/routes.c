/*
 * The route table of ccgate's HTTP API (docs/api.md): every route, its
 * handler, who may call it and its dialect.  The front ends hand it to
 * request.c; route.c matches in it.
 */
#include "config.h"

#include "http.h"

/*
 * The API's routes.  A route is one row and its handler: adding one is a
 * row here and the handler's declaration in http.h.  request.c reads the
 * body (unless ROUTE_NO_BODY) and checks access before the handler runs.
 * Keep rows of one pattern together: /metrics counts a pattern as one.
 */
#define N	DIALECT_NATIVE
#define KEY	ACCESS_KEY
#define ADMIN	ACCESS_ADMIN
static const struct route_def routes[] = {
	{ "GET",  "/healthz",		health_live, ACCESS_ANYONE,
	    DIALECT_PLAIN, ROUTE_NO_BODY | ROUTE_NO_USAGE },
	{ "GET",  "/readyz",		health_ready, ACCESS_ANYONE,
	    DIALECT_PLAIN, ROUTE_NO_BODY | ROUTE_NO_USAGE },
	{ "GET",  "/metrics",		metrics_handle, ACCESS_ANYONE,
	    DIALECT_PLAIN, ROUTE_NO_BODY | ROUTE_NO_USAGE },

	{ "POST", "/api/chat",		chat_handle, KEY, N, ROUTE_IDEMPOTENT },
	/* Each item is admitted by the key's quotas as if sent alone. */
	{ "POST", "/api/chat/batch",	chat_batch_handle, ACCESS_KEY_ONLY, N,
	    0 },
	{ "POST", "/api/conversations",	conv_create_handle, KEY, N, 0 },
	{ "GET",  "/api/conversations",	conv_list_handle, KEY, N, 0 },
	{ "GET",  "/api/conversations/:id", conv_get_handle, KEY, N, 0 },
	{ "DELETE", "/api/conversations/:id", conv_delete_handle, KEY, N, 0 },
	{ "POST", "/api/conversations/:id/continue", conv_continue_handle,
	    KEY, N, ROUTE_IDEMPOTENT },
	{ "GET",  "/api/models",	models_handle, KEY, N, 0 },
	{ "GET",  "/api/files",		files_list_handle, KEY, N, 0 },
	{ "POST", "/api/files",		files_post_handle, KEY, N,
	    ROUTE_NO_BODY },
	{ "GET",  "/api/files/*",	files_get_handle, KEY, N, 0 },
	{ "PUT",  "/api/files/*",	files_put_handle, KEY, N,
	    ROUTE_NO_BODY },
	{ "DELETE", "/api/files/*",	files_delete_handle, KEY, N, 0 },
	{ "GET",  "/api/cli-pool/stats", poolinfo_stats_handle, KEY, N, 0 },
	{ "GET",  "/api/cli-pool/health", poolinfo_health_handle, KEY, N, 0 },
	/* The old path of /admin/pool/initialize: nginx gates both alike. */
	{ "POST", "/api/cli-pool/initialize", poolinfo_init_handle, ADMIN, N,
	    0 },
	/* nginx's auth_request for the WebSocket upgrade (wsauth.c). */
	{ "GET",  "/api/ws",		ws_auth_handle, ACCESS_KEY_ONLY, N,
	    ROUTE_KEY_PROTOCOL },

	{ "POST", "/v1/chat/completions", openai_chat_handle, KEY,
	    DIALECT_OPENAI, ROUTE_IDEMPOTENT },
	{ "GET",  "/v1/models",		openai_models_handle, KEY,
	    DIALECT_OPENAI, 0 },
	{ "GET",  "/v1/models/:id",	openai_model_handle, KEY,
	    DIALECT_OPENAI, 0 },
	{ "POST", "/v1/messages",	anthropic_messages_handle, KEY,
	    DIALECT_ANTHROPIC, ROUTE_IDEMPOTENT },
	{ "POST", "/v1/messages/count_tokens", anthropic_count_handle, KEY,
	    DIALECT_ANTHROPIC, 0 },

	{ "POST", "/admin/login",	adminapi_login, ACCESS_ANYONE, N, 0 },
	{ "GET",  "/admin/me",		adminapi_me, ADMIN, N, 0 },
	{ "POST", "/admin/api-keys",	adminapi_keys_create, ADMIN, N, 0 },
	{ "GET",  "/admin/api-keys",	adminapi_keys_list, ADMIN, N, 0 },
	{ "GET",  "/admin/api-keys/:id", adminapi_keys_get, ADMIN, N, 0 },
	{ "PUT",  "/admin/api-keys/:id", adminapi_keys_update, ADMIN, N, 0 },
	{ "DELETE", "/admin/api-keys/:id", adminapi_keys_revoke, ADMIN, N, 0 },
	{ "POST", "/admin/api-keys/:id/rotate", adminapi_keys_rotate, ADMIN,
	    N, 0 },
	{ "GET",  "/admin/tenants/:name", adminapi_tenant_get, ADMIN, N, 0 },
	{ "PUT",  "/admin/tenants/:name", adminapi_tenant_update, ADMIN, N,
	    0 },
	{ "DELETE", "/admin/tenants/:name", adminapi_tenant_purge, ADMIN, N,
	    0 },
	{ "GET",  "/admin/usage",	adminapi_usage, ADMIN, N, 0 },
	{ "GET",  "/admin/requests",	adminapi_requests, ADMIN, N, 0 },
	{ "GET",  "/admin/errors",	adminapi_errors, ADMIN, N, 0 },
	{ "GET",  "/admin/pool",	poolinfo_admin_handle, ADMIN, N, 0 },
	{ "POST", "/admin/pool/initialize", poolinfo_init_handle, ADMIN, N,
	    0 },
	{ "GET",  "/admin/audit",	adminapi_audit, ADMIN, N, 0 },
};
#undef N
#undef KEY
#undef ADMIN

const struct route_table http_routes = {
	routes, sizeof routes / sizeof routes[0], sign_check, idem_begin
};

/* Slot 0 counts what matched no row; row i counts in slot i + 1. */
_Static_assert(sizeof routes / sizeof routes[0] < METRICS_SLOTS,
    "more routes than counters");
