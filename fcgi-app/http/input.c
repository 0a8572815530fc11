/*
 * Validation of request fields.  Each helper checks one member of a JSON
 * body; on a bad value it sends a 400 in the route's dialect that names
 * the field, and returns -1 so the handler stops before changing anything.
 * perm_check, last, holds a turn to what the key may do.
 */
#include "config.h"

#include <string.h>

#include "http.h"

/* An optional (or required) string of at most maxlen bytes. */
int
input_str(struct request *r, json_t *obj, const char *name, int required,
    size_t maxlen, const char **out)
{
	json_t	*v = req_field(r, obj, name);

	*out = NULL;
	if (v == NULL || json_is_null(v)) {
		if (required) {
			req_error(r, 400, NULL, "%s: required", name);
			return (-1);
		}
		return (0);
	}
	if (!json_is_string(v)) {
		req_error(r, 400, NULL, "%s: must be a string", name);
		return (-1);
	}
	if (json_string_length(v) > maxlen) {
		req_error(r, 400, NULL, "%s: longer than %zu bytes", name,
		    maxlen);
		return (-1);
	}
	if (strlen(json_string_value(v)) != json_string_length(v)) {
		req_error(r, 400, NULL, "%s: contains a NUL character", name);
		return (-1);
	}
	if (required && json_string_length(v) == 0) {
		req_error(r, 400, NULL, "%s: must not be empty", name);
		return (-1);
	}
	*out = json_string_value(v);
	return (0);
}

/* An optional integer within [min, max]; absent leaves *out alone. */
int
input_int(struct request *r, json_t *obj, const char *name, long long min,
    long long max, long long *out)
{
	json_t	*v = req_field(r, obj, name);

	if (v == NULL || json_is_null(v))
		return (0);
	if (!json_is_integer(v)) {
		req_error(r, 400, NULL, "%s: must be an integer", name);
		return (-1);
	}
	if (json_integer_value(v) < min || json_integer_value(v) > max) {
		req_error(r, 400, NULL, "%s: must be between %lld and %lld",
		    name, min, max);
		return (-1);
	}
	*out = (long long)json_integer_value(v);
	return (0);
}

/* An optional number within [min, max]; absent leaves *out alone. */
int
input_number(struct request *r, json_t *obj, const char *name, double min,
    double max, double *out)
{
	json_t	*v = req_field(r, obj, name);

	if (v == NULL || json_is_null(v))
		return (0);
	if (!json_is_number(v)) {
		req_error(r, 400, NULL, "%s: must be a number", name);
		return (-1);
	}
	if (json_number_value(v) < min || json_number_value(v) > max) {
		req_error(r, 400, NULL, "%s: must be between %g and %g", name,
		    min, max);
		return (-1);
	}
	*out = json_number_value(v);
	return (0);
}

/* An optional boolean; absent leaves *out alone. */
int
input_bool(struct request *r, json_t *obj, const char *name, int *out)
{
	json_t	*v = req_field(r, obj, name);

	if (v == NULL || json_is_null(v))
		return (0);
	if (!json_is_boolean(v)) {
		req_error(r, 400, NULL, "%s: must be true or false", name);
		return (-1);
	}
	*out = json_is_true(v);
	return (0);
}

/* An optional model name, which must be one this gateway offers. */
int
input_model(struct request *r, json_t *obj, const char **out)
{
	int	i;

	if (input_str(r, obj, "model", 0, 127, out) != 0)
		return (-1);
	if (*out == NULL)
		return (0);
	for (i = 0; i < appconf->nmodels; i++) {
		if (strcmp(appconf->models[i], *out) == 0)
			return (0);
	}
	req_error(r, 400, NULL, "model: unknown model \"%s\" (GET /api/models "
	    "lists them)", *out);
	return (-1);
}

/*
 * Check a turn against the key's permissions before anything is stored:
 * the model, streaming, and the max_tokens cap (which also applies when
 * the request names no max_tokens); then reserve its tokens of the key's
 * day (req_reserve).  On refusal the 403 (or 429) is sent.
 */
int
perm_check(struct request *r, const char *model, int stream,
    long long *max_tokens)
{
	const struct apikey	*k = req_key(r);

	if (model != NULL && !auth_model_allowed(k, model)) {
		req_error(r, 403, NULL, "model: this key may not use \"%s\"",
		    model);
		return (-1);
	}
	if (stream && !k->allow_streaming) {
		req_error(r, 403, NULL, "stream: this key may not stream");
		return (-1);
	}
	if (k->max_tokens > 0) {
		if (*max_tokens > k->max_tokens) {
			req_error(r, 403, NULL, "max_tokens: this key allows "
			    "at most %lld", k->max_tokens);
			return (-1);
		}
		if (*max_tokens == 0)
			*max_tokens = k->max_tokens;
	}
	/* Last: what the turn may spend is held before it runs. */
	return (req_reserve(r, max_tokens));
}
