package main

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestFlagsFirst(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"serve REF --listen unix:/x.sock", "serve --listen unix:/x.sock REF"},
		{"serve --listen unix:/x.sock REF", "serve --listen unix:/x.sock REF"},
		{"--log-level debug mount REF DIR --plain-http --cache-dir /c", "--log-level debug mount --plain-http --cache-dir /c REF DIR"},
		{"mount REF --attach=nbdfuse DIR --json", "mount --attach=nbdfuse --json REF DIR"},
		{"prefetch record REF DIR --duration 5s", "prefetch record --duration 5s REF DIR"},
		{"cat REF -- --not-a-flag", "cat REF -- --not-a-flag"},
		{"cat REF --bogus", "cat --bogus REF"},
		{"serve REF --help", "serve --help REF"},
		{"mount REF --plain-http --generate-bash-completion", "mount --plain-http REF --generate-bash-completion"},
		{"nosuchcommand a --b", "nosuchcommand a --b"},
	} {
		got := flagsFirst(newApp(), append([]string{"lazyblk"}, strings.Fields(tc.in)...))
		if want := append([]string{"lazyblk"}, strings.Fields(tc.want)...); !slices.Equal(got, want) {
			t.Errorf("%s:\n got %q\nwant %q", tc.in, got, want)
		}
	}
}

// A flag after the reference reaches the command: serve sees --listen
// (and refuses its value by name) instead of "Required flag not set".
func TestFlagAfterArgument(t *testing.T) {
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	app.ExitErrHandler = func(*cli.Context, error) {} // return the error instead of exiting
	args := flagsFirst(app, []string{"lazyblk", "serve", "127.0.0.1:1/a:b", "--listen", "udp:x"})
	err := app.Run(args)
	if err == nil || !strings.Contains(err.Error(), `--listen "udp:x"`) {
		t.Fatalf("serve REF --listen udp:x: err %v, want the --listen value refused", err)
	}
	err = app.Run(flagsFirst(app, []string{"lazyblk", "cat", "127.0.0.1:1/a:b", "--bogus"}))
	if err == nil || !strings.Contains(err.Error(), "bogus") {
		t.Fatalf("cat REF --bogus: err %v, want the flag named", err)
	}
}
