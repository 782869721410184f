" fpol policies (docs/editors.md)
autocmd BufNewFile,BufRead *.fpol setfiletype fpol
