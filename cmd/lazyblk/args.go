package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// flagsFirst moves the flags a command was given after its positional
// arguments in front of them: urfave/cli stops reading flags at the first
// argument, and people type `lazyblk serve REF --listen unix:/x.sock`.
// Arguments after "--" stay arguments; an unknown flag moves too, so the
// command refuses it by name; the shell-completion flag stays last, where
// urfave/cli looks for it.
func flagsFirst(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	flags := app.Flags
	cmds := app.Commands
	// Walk down the command path: global flags, a command, its flags, a
	// subcommand, ... The leaf is the first command without subcommands.
	for {
		lead, after := splitFlags(flags, rest, true)
		out = append(out, lead...)
		if len(after) == 0 || after[0] == "--" {
			return append(out, after...)
		}
		cmd := findCommand(cmds, after[0])
		if cmd == nil {
			return append(out, after...)
		}
		out = append(out, after[0])
		rest, flags, cmds = after[1:], cmd.Flags, cmd.Subcommands
		if len(cmds) == 0 {
			break
		}
	}
	var last []string
	if n := len(rest); n > 0 && rest[n-1] == "--generate-bash-completion" {
		rest, last = rest[:n-1], rest[n-1:]
	}
	fl, positional := splitFlags(flags, rest, false)
	out = append(out, fl...)
	out = append(out, positional...)
	return append(out, last...)
}

// splitFlags separates args into flags (each with its value) and the
// rest. With leading, it stops at the first argument that is not a flag;
// otherwise it collects flags from anywhere up to "--".
func splitFlags(flags []cli.Flag, args []string, leading bool) (fl, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return fl, append(rest, args[i:]...)
		}
		if len(a) < 2 || a[0] != '-' {
			if leading {
				return fl, append(rest, args[i:]...)
			}
			rest = append(rest, a)
			continue
		}
		fl = append(fl, a)
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !hasValue && takesValue(flags, name) && i+1 < len(args) {
			i++
			fl = append(fl, args[i])
		}
	}
	return fl, rest
}

// takesValue reports whether the flag named name (without dashes) needs
// a value: every defined flag but booleans and help.
func takesValue(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				_, isBool := f.(*cli.BoolFlag)
				return !isBool
			}
		}
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
