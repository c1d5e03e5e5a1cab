/**
 * The text of the generated help command: the commands the sender may run in the room (the router filters them),
 * one usage line each with its help line, or one command's usage when asked about it (`!help ban`).
 */
import type { Command } from './commands.ts';

/** The usage line of a command: `!ban <user:userId> [reason...]`. */
export function usage(prefix: string, cmd: Command): string {
  return `${prefix}${cmd.pattern.source}`;
}

/** The help text for `visible` commands; `about` (what followed the help command) picks one by name. */
export function helpText(prefix: string, visible: readonly Command[], about: string): string {
  if (about !== '') {
    const name = about.toLowerCase().split(/\s+/).join(' ');
    const bare = name.startsWith(prefix) ? name.slice(prefix.length) : name;
    const cmd = visible.find((c) => c.pattern.path.join(' ') === bare);
    if (!cmd) return `No command "${bare}" that you may run here.`;
    return `${usage(prefix, cmd)}${cmd.opts.help ? ` — ${cmd.opts.help}` : ''}`;
  }
  if (visible.length === 0) return 'There is no command you may run here.';
  return ['Commands you may run here:', ...visible.map((c) => `${usage(prefix, c)}${c.opts.help ? ` — ${c.opts.help}` : ''}`)].join('\n');
}
