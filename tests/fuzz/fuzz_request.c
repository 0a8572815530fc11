/*
 * libFuzzer target: what ccgate-fcgi reads from a client before anything
 * reaches MariaDB: the body's nesting check and JSON parse (duplicate
 * keys refused), an API key's format, and an admin token.
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "http.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t	 secret[32] = { 7 };
	json_error_t		 err;
	json_t			*j;
	char			*s, id[KEY_ID_LEN + 1], name[64], why[128];
	long long		 admin, ver;

	if (req_json_depth_ok((const char *)data, size, 32) == 0 &&
	    (j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES,
	    &err)) != NULL)
		json_decref(j);

	if ((s = malloc(size + 1)) == NULL)
		return (0);
	memcpy(s, data, size);
	s[size] = '\0';
	if (auth_key_parse(s, id) == 0 && strlen(id) != KEY_ID_LEN)
		abort();
	if (jwt_verify(secret, s, 1000000, 900, &admin, name, sizeof name,
	    &ver, why, sizeof why) == 0)
		abort();	/* nobody can forge a token without the secret */
	free(s);
	return (0);
}
