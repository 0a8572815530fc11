/*
 * The three API dialects' error shapes:
 *   native	{"success":false,"error":{"type","message"}}
 *   OpenAI	{"error":{"message","type","param","code"}}
 *   Anthropic	{"type":"error","error":{"type","message"}}
 */
#include "config.h"

#include <string.h>

#include "http.h"
#include "proto.h"

/* The error type a status maps to in a dialect. */
const char *
dialect_error_type(enum dialect d, int status)
{
	switch (status) {
	case 400:
	case 411:
	case 413:
	case 415:
	case 416:
		return (d == DIALECT_ANTHROPIC && status == 413 ?
		    "request_too_large" : "invalid_request_error");
	case 401:
		return ("authentication_error");
	case 403:
		return ("permission_error");
	case 404:
		return (d == DIALECT_OPENAI ? "invalid_request_error" :
		    "not_found_error");
	case 405:
		return (d == DIALECT_OPENAI ? "invalid_request_error" :
		    "method_not_allowed");
	case 429:
		return (d == DIALECT_OPENAI ? "rate_limit_exceeded" :
		    "rate_limit_error");
	case 503:
		return (d == DIALECT_OPENAI ? "service_unavailable" :
		    "overloaded_error");
	case 504:
		return ("timeout_error");
	case 502:
		return (d == DIALECT_NATIVE ? "cli_error" : "api_error");
	default:
		return ("api_error");
	}
}

/*
 * The error type of a pool error code that names more than its status (the
 * upstream account's), or NULL for the status's own.
 */
const char *
dialect_upstream_type(enum dialect d, const char *code)
{
	if (strcmp(code, PROTO_E_UPSTREAM_CREDENTIAL) == 0) {
		switch (d) {
		case DIALECT_OPENAI:
			return ("service_unavailable");
		case DIALECT_ANTHROPIC:
			return ("api_error");
		case DIALECT_NATIVE:
		case DIALECT_PLAIN:
			break;
		}
		return ("upstream_credential_rejected");
	}
	if (strcmp(code, PROTO_E_UPSTREAM_LIMITED) == 0)
		return (d == DIALECT_OPENAI ? "rate_limit_exceeded" :
		    "rate_limit_error");
	if (strcmp(code, PROTO_E_UPSTREAM_OVERLOADED) == 0)
		return (d == DIALECT_OPENAI ? "service_unavailable" :
		    "overloaded_error");
	return (NULL);
}

/* Build an error body (a new reference). */
json_t *
dialect_error(enum dialect d, const char *type, const char *message)
{
	switch (d) {
	case DIALECT_OPENAI:
		return (json_pack("{s:{s:s, s:s, s:n, s:n}}", "error",
		    "message", message, "type", type, "param", "code"));
	case DIALECT_ANTHROPIC:
		return (json_pack("{s:s, s:{s:s, s:s}}", "type", "error",
		    "error", "type", type, "message", message));
	case DIALECT_NATIVE:
	case DIALECT_PLAIN:
		break;
	}
	return (json_pack("{s:b, s:{s:s, s:s}}", "success", 0, "error",
	    "type", type, "message", message));
}
