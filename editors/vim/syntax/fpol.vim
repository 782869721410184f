" Vim syntax file
" Language:    fpol (fuse-bpf filesystem policies, docs/language.md)
" Filenames:   *.fpol
" The op and group names are the table of compiler/ops.py (tests/test_editors.py keeps them
" equal); highlighting is checked against the compiler's own parse of every example.

if exists("b:current_syntax")
  finish
endif

let s:cpo_save = &cpo
set cpo&vim

" Words are [A-Za-z0-9_] plus `.` and `-` (case-sensitive, like the language).
syn case match
syn iskeyword @,48-57,_,.,-

syn keyword fpolAction     allow deny audit redirect
syn keyword fpolTarget     to userspace before after instead
syn keyword fpolScope      under at matching named
syn keyword fpolExcept     except
syn keyword fpolWith       with
syn keyword fpolSubject    by uid gid user group
syn keyword fpolDefault    default
syn keyword fpolInclude    include
syn keyword fpolGroup      read write create delete list stat exec all
syn keyword fpolOp         lookup getattr setattr access open opendir mknod mkdir unlink rmdir rename link symlink readlink fallocate copy_file_range lseek flush fsync fsyncdir release releasedir readdir statfs getxattr listxattr setxattr removexattr
syn match   fpolErrno      "\<E[A-Z0-9]\+\>"

syn match   fpolHeader     "^\s*\zs\(abi\|mode\|names\)\>" nextgroup=fpolHeaderValue skipwhite
syn match   fpolHeaderValue "[A-Za-z0-9_][A-Za-z0-9_.-]*" contained
syn match   fpolHeader     "^\s*\zs\<policy\>" nextgroup=fpolPolicyName skipwhite
syn match   fpolPolicyName "[A-Za-z0-9_][A-Za-z0-9_.-]*" contained
syn match   fpolDefine     "^\s*\zs\<define\>" nextgroup=fpolDefName skipwhite
syn match   fpolDefName    "[A-Za-z0-9_][A-Za-z0-9_.-]*" contained nextgroup=fpolAssign skipwhite
syn match   fpolAssign     "=" contained

" Paths: unquoted from `/`, or from a defined name `$NAME`.
syn match   fpolPath       "\(^\|[^A-Za-z0-9_.$/-]\)\zs/[A-Za-z0-9._+@%~=/-]*"
syn match   fpolPath       "\(^\|[^A-Za-z0-9_.$/-]\)\zs\$[A-Za-z_][A-Za-z0-9_]*[A-Za-z0-9._+@%~=/-]*" contains=fpolVariable
syn match   fpolVariable   "\$[A-Za-z_][A-Za-z0-9_]*" contained

" Quoted paths and globs, on one line; in `matching` and `named` the glob characters.
syn region  fpolString     start=+"+ skip=+\\\\\|\\"+ end=+"+ end=+$+ oneline contains=fpolEscape,fpolBadEscape,fpolVariable
syn region  fpolGlobString start=+\(\<\(matching\|named\)\s\+\)\@<="+ skip=+\\\\\|\\"+ end=+"+ end=+$+ oneline contains=fpolEscape,fpolBadEscape,fpolVariable,fpolGlob
syn match   fpolGlob       "\*\*\|[*?{},]" contained
syn match   fpolBadEscape  "\\." contained
syn match   fpolEscape     +\\\(["\\]\|x\x\x\)+ contained

syn match   fpolContinuation "\\\ze\s*\(#.*\)\=$"
syn match   fpolComment    "#.*$" contains=@Spell
syn match   fpolComma      ","

hi def link fpolAction       Statement
hi def link fpolTarget       Keyword
hi def link fpolScope        Keyword
hi def link fpolExcept       Keyword
hi def link fpolWith         Keyword
hi def link fpolSubject      Keyword
hi def link fpolDefault      PreProc
hi def link fpolInclude      Include
hi def link fpolDefine       Define
hi def link fpolDefName      Identifier
hi def link fpolAssign       Operator
hi def link fpolHeader       PreProc
hi def link fpolHeaderValue  Constant
hi def link fpolPolicyName   Identifier
hi def link fpolGroup        Type
hi def link fpolOp           Function
hi def link fpolErrno        Constant
hi def link fpolPath         String
hi def link fpolVariable     Identifier
hi def link fpolString       String
hi def link fpolGlobString   String
hi def link fpolGlob         Special
hi def link fpolEscape       SpecialChar
hi def link fpolBadEscape    Error
hi def link fpolContinuation Special
hi def link fpolComment      Comment
hi def link fpolComma        Delimiter

let b:current_syntax = "fpol"

let &cpo = s:cpo_save
unlet s:cpo_save
