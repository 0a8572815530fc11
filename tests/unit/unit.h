/* What every Check suite's main shares. */
#ifndef CCGATE_UNIT_H
#define CCGATE_UNIT_H

#include <check.h>

/* Run one test case of the given tests; exit status 0 if all passed. */
static inline int
unit_run(const char *suite, const char *tcname, const TTest *const *tests)
{
	Suite	*s = suite_create(suite);
	TCase	*tc = tcase_create(tcname);
	SRunner	*sr;
	int	 failed;

	for (; *tests != NULL; tests++)
		tcase_add_test(tc, *tests);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return (failed == 0 ? 0 : 1);
}

#endif
