/*
 * The audit log: who changed what, when, from where, and the object
 * before and after.  audit_record runs inside the caller's transaction,
 * so the record commits or rolls back with the change itself.  Callers
 * pass views without secrets (keys_json never holds a secret or hash).
 */
#include "config.h"

#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core.h"

/* Record one change; before and after are borrowed (either may be NULL). */
int
audit_record(struct db *db, const struct actor *who, const char *action,
    const char *object_type, const char *object_id, json_t *before,
    json_t *after)
{
	char	*b = NULL, *a = NULL;
	int	 rc = -1;

	if ((before != NULL && (b = json_dumps(before, JSON_COMPACT |
	    JSON_ENCODE_ANY)) == NULL) || (after != NULL && (a = json_dumps(
	    after, JSON_COMPACT | JSON_ENCODE_ANY)) == NULL))
		goto out;
	rc = db_run(db, NULL, NULL, "INSERT INTO audit_log (actor, source_ip, "
	    "action, object_type, object_id, before_state, after_state, "
	    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, UTC_TIMESTAMP(3))",
	    "sssssss", who->name, who->ip[0] ? who->ip : NULL, action,
	    object_type, object_id, b, a);
out:
	free(b);
	free(a);
	return (rc);
}

/* The actor of a command-line change: "cli:<unix user>". */
void
audit_cli_actor(struct actor *who)
{
	struct passwd	*pw = getpwuid(getuid());

	memset(who, 0, sizeof *who);
	snprintf(who->name, sizeof who->name, "cli:%s", pw != NULL ?
	    pw->pw_name : "unknown");
}
