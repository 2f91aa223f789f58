package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

// bashCompletion asks the binary itself for the words that may follow
// (urfave/cli's --generate-bash-completion).
const bashCompletion = `# lazyblk bash completion: source it, or install it as
# /usr/share/bash-completion/completions/lazyblk
_lazyblk() {
	local cur="${COMP_WORDS[COMP_CWORD]}" words
	if [[ "$cur" == -* ]]; then
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" "$cur" --generate-bash-completion 2>/dev/null)
	else
		words=$("${COMP_WORDS[@]:0:$COMP_CWORD}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
	[[ ${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
	return 0
}
complete -o default -F _lazyblk lazyblk
`

// zshCompletion reuses the bash function through bashcompinit.
const zshCompletion = `#compdef lazyblk
autoload -U +X bashcompinit && bashcompinit
` + bashCompletion

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script",
		ArgsUsage: "bash|zsh",
		Description: `Examples:
  lazyblk completion bash > /usr/share/bash-completion/completions/lazyblk
  source <(lazyblk completion bash)
  lazyblk completion zsh > "${fpath[1]}/_lazyblk"`,
		Action: func(c *cli.Context) error {
			switch c.Args().First() {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			default:
				return cli.Exit("completion needs bash or zsh", 2)
			}
			return nil
		},
	}
}
