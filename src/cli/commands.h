/* The `pikv` subcommands; each returns the process exit status
 * (0 success, 1 failure, 2 usage error). argv[0] is the command's name. */
#ifndef PIKV_CLI_COMMANDS_H
#define PIKV_CLI_COMMANDS_H

int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_eplb(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_duo_calibrate(int argc, char **argv);
int cmd_placement(int argc, char **argv);

#endif
