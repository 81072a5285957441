[
  inputs: ["{mix,.formatter}.exs", "{build,config,lib,test,bench,examples}/**/*.{ex,exs}"]
]
