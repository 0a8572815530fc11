/* What every Check suite's main shares. */
#ifndef CCGATE_UNIT_H
#define CCGATE_UNIT_H

#include <check.h>

/*
 * Run one test case of the given tests, each between setup and teardown
 * (if given) and within timeout seconds (0: 60, not Check's 4, which a
 * loaded machine or a sanitizer can pass: a test's time limit only ends
 * one that hangs); exit status 0 if all passed.
 */
static inline int
unit_run_fixture(const char *suite, const char *tcname,
    const TTest *const *tests, void (*setup)(void), void (*teardown)(void),
    int timeout)
{
	Suite	*s = suite_create(suite);
	TCase	*tc = tcase_create(tcname);
	SRunner	*sr;
	int	 failed;

	if (setup != NULL || teardown != NULL)
		tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, timeout > 0 ? timeout : 60);
	for (; *tests != NULL; tests++)
		tcase_add_test(tc, *tests);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return (failed == 0 ? 0 : 1);
}

/* Run one test case of the given tests; exit status 0 if all passed. */
static inline int
unit_run(const char *suite, const char *tcname, const TTest *const *tests)
{
	return (unit_run_fixture(suite, tcname, tests, NULL, NULL, 0));
}

#endif
